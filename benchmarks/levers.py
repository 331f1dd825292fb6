"""Per-turn CPU levers, A/B in one run (issue 15; docs/decisions/0010-cpu-levers.md).

Arms: one worker process each (threads pool, concurrency 16, the instant echo agent), on
one private redis-server (so ``INFO commandstats`` counts this run only) and one scratch
database.  Each arm differs from ``base`` (the defaults) by its environment only:

* ``task_events``: ``TURNQ_TASK_EVENTS=true`` (Celery task events, off by default);
* ``uvloop``: ``benchmarks/patches/uvloop``: the worker's turn loop on uvloop;
* ``orjson``: ``benchmarks/patches/orjson`` on ``PYTHONPATH``: every stdlib JSON call of
  the worker that orjson can serve is served by it (an upper bound of the lever);
* ``always_check``: ``benchmarks/patches/always_check``: the drain looks for a runnable
  turn in Postgres after every release, as before the "kicked while held" mark
  (decision 0012): what the mark saves;
* ``client_parse`` (``--model stream``): ``benchmarks/patches/client_parse``: every model
  response built the OpenAI client's own way, without the fast parse path (decision 0013);
* ``no_keepalive`` (``--model stream``): ``benchmarks/patches/no_keepalive``: the OpenAI
  client reuses no HTTP connection (what connection reuse saves);
* any ``--arms a+b`` combines arms (at most one of the patches: a process runs one
  ``sitecustomize``).

The patch arms need ``pip install orjson uvloop`` (neither is a dependency of turnq:
decision 0010 dropped both).

Rounds: every arm drains ``--sessions`` one-turn sessions (workers paused while they are
enqueued, as B2), the others paused; the order rotates every round, so drift and
neighbours' load fall on every arm alike.  Figures per arm, medians over rounds: turns/s,
worker CPU ms per turn (the worker's process tree), Redis CPU ms per turn (the private
server), Redis commands per turn (all clients: producer, worker) and ratios to ``base``.

    python -m benchmarks.levers [--sessions 400] [--rounds 5] [--arms base,no_events,...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.b2_throughput import drain_turnq
from benchmarks.b9_production_shape import commands, private_redis
from benchmarks.common import running, scratch_stack, table, turnq_worker
from benchmarks.resources import server_pids
from tests.support.stub_llm import stub_llm_process

PATCHES = Path(__file__).resolve().parent / "patches"
ARMS: dict[str, dict[str, str]] = {
    "base": {},
    "task_events": {"TURNQ_TASK_EVENTS": "true"},
    "uvloop": {"PYTHONPATH": str(PATCHES / "uvloop")},
    "orjson": {"PYTHONPATH": str(PATCHES / "orjson")},
    "always_check": {"PYTHONPATH": str(PATCHES / "always_check")},
    "no_keepalive": {"PYTHONPATH": str(PATCHES / "no_keepalive")},
    "client_parse": {"PYTHONPATH": str(PATCHES / "client_parse")},
}
CONCURRENCY = 16
ECHO = {"TURNQ_AGENT": "tests.agents:echo"}
# ``--model stream``: the demo agent on `turnq stub-llm` over HTTP (Chat Completions),
# each answer 100 tokens streamed at 400/s: the per-chunk path (HTTP client, SSE parsing,
# the SDK's streaming, coalesced stream entries) without waiting seconds per turn
STREAM = ("--profile", "realistic", "--answer-tokens", "100", "--tokens-per-s", "400",
          "--no-tool-first", "--jitter", "0")  # fmt: skip
STREAM_CONCURRENCY = 64


def arm_env(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for part in name.split("+"):
        if "PYTHONPATH" in env and "PYTHONPATH" in ARMS[part]:
            raise ValueError(f"{name}: two patches (one sitecustomize per process)")
        env.update(ARMS[part])
    return env


def run(
    sessions: int = 400, rounds: int = 5, arms: list[str] | None = None, model: str = "instant"
) -> dict[str, Any]:
    arms = arms or list(ARMS)
    with ExitStack() as stack:
        env = stack.enter_context(scratch_stack())
        server = stack.enter_context(private_redis(env))
        assert server.proc is not None
        servers = {"redis": server.proc.pid, "postgres": server_pids()["postgres"]}
        agent, concurrency = ECHO, CONCURRENCY
        if model == "stream":
            stub = stack.enter_context(stub_llm_process(*STREAM))
            agent, concurrency = stub.worker_env("chat"), STREAM_CONCURRENCY
        procs = {
            a: turnq_worker(
                env,
                f"lv{i}",
                concurrency,
                **agent,
                TURNQ_NAMESPACE=f"{env['TURNQ_NAMESPACE']}{i}:",
                **arm_env(a),
            )
            for i, a in enumerate(arms)
        }
        out: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
        with running(list(procs.values())):
            for r in range(-1, rounds):  # round -1 warms every arm up, unrecorded
                size = 50 if r < 0 else sessions
                order = arms[r % len(arms) :] + arms[: r % len(arms)] if r >= 0 else arms
                for a in order:
                    for w in procs.values():
                        w.pause()
                    before = commands(server)
                    d = drain_turnq(
                        env, [procs[a]], [f"lv-{a.replace('+', '.')}-{r}-{k}" for k in range(size)],
                        servers=servers,
                    )  # fmt: skip
                    # the worker's trailing acks and events land just after the last commit
                    time.sleep(0.3)
                    delta = commands(server) - before
                    d["commands"] = dict(delta)
                    d["commands_per_turn"] = sum(delta.values()) / size
                    d["redis_cpu_ms_per_turn"] = d["usage"]["cpu_s"]["redis"] * 1000 / size
                    d["worker_cpu_ms_per_turn"] = d["usage"]["cpu_s"]["worker"] * 1000 / size
                    if r >= 0:
                        out[a].append(d)
            for w in procs.values():
                w.resume()
    return {**summarise(out, sessions, rounds), "model": model}


def summarise(out: dict[str, list[dict[str, Any]]], sessions: int, rounds: int) -> dict[str, Any]:
    def med(a: str, k: str) -> float:
        return statistics.median(x[k] for x in out[a])

    base = next(iter(out))
    res: dict[str, Any] = {"sessions": sessions, "rounds": rounds, "arms": {}}
    for a, runs in out.items():
        cmds: Counter[str] = Counter()
        for x in runs:
            cmds.update(x["commands"])
        # per-round ratios to the base arm of the same round: the noise shows in their spread
        ratios = [
            x["worker_cpu_ms_per_turn"] / b["worker_cpu_ms_per_turn"]
            for x, b in zip(runs, out[base], strict=True)
        ]
        res["arms"][a] = {
            "rate": med(a, "rate"),
            "worker_cpu_ms_per_turn": med(a, "worker_cpu_ms_per_turn"),
            "worker_cpu_ms_per_turn_all": [round(x["worker_cpu_ms_per_turn"], 3) for x in runs],
            "worker_cpu_ratio_per_round": [round(v, 3) for v in ratios],
            "redis_cpu_ms_per_turn": med(a, "redis_cpu_ms_per_turn"),
            "commands_per_turn": med(a, "commands_per_turn"),
            "commands_per_turn_by_name": {
                k: round(v / (sessions * len(runs)), 2) for k, v in cmds.most_common()
            },
            "failed": sum(x["n"] - x["succeeded"] for x in runs),
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--model", choices=["instant", "stream"], default="instant")
    ap.add_argument("--out", default=None, help="write the raw figures here (JSON)")
    args = ap.parse_args()
    d = run(args.sessions, args.rounds, args.arms.split(","), args.model)
    if args.out:
        Path(args.out).write_text(json.dumps(d, indent=1))
    base = next(iter(d["arms"].values()))
    rows = [
        [
            a,
            f"{x['rate']:.0f}",
            f"{x['worker_cpu_ms_per_turn']:.2f}",
            f"{x['worker_cpu_ms_per_turn'] / base['worker_cpu_ms_per_turn']:.3f}",
            f"{min(x['worker_cpu_ratio_per_round']):.2f}-{max(x['worker_cpu_ratio_per_round']):.2f}",
            f"{x['redis_cpu_ms_per_turn']:.3f}",
            f"{x['commands_per_turn']:.1f}",
            str(x["failed"]),
        ]
        for a, x in d["arms"].items()
    ]
    head = ["arm", "turns/s", "worker CPU ms/turn", "vs base", "per-round range",
            "Redis CPU ms/turn", "Redis cmds/turn", "failed"]  # fmt: skip
    title = f"levers, {d['model']} model: {d['sessions']} sessions x {d['rounds']} rounds"
    print(table(title, head, rows))


if __name__ == "__main__":
    main()
