"""B3: I/O-bound turns: the model is `turnq stub-llm` over HTTP with 1 s latency.

One worker process (threads pool, concurrency 256, one asyncio loop) drains one-turn
sessions whose model call takes 1 s.  Figures:

* turns in flight: the stub's ``max_in_flight`` (HTTP calls open at once), all from
  the one process; target >= 200;
* throughput: turns/s drained (same definition as B2: workers paused while the turns
  are enqueued, rate = turns / (last finished_at - resume)), against the CPU bound
  measured in the same run: the same one process draining the same number of
  sessions with the instant model (rounds alternate); target >= 80% of it.

With >= 200 calls in flight and 1 s latency the I/O bound is ~200 turns/s, above
what one process can do on CPU, so the stub run is expected to be CPU-bound too; the
remaining gap is the extra CPU of a real HTTP model call (client, JSON, the stub
itself on the same 2 cores).

    python -m benchmarks.b3_io_bound [--sessions 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.b2_throughput import ECHO, drain_turnq
from benchmarks.common import median, running, scratch_stack, table, turnq_worker
from tests.support.stub_llm import stub_llm_process

CONCURRENCY = 256
LATENCY_S = 1.0


def stub_env(url: str) -> dict[str, str]:
    return {
        "TURNQ_MODEL_PROVIDER": "openai",
        "TURNQ_OPENAI_BASE_URL": url + "/v1",
        "TURNQ_OPENAI_API_KEY": "test-key",
        "TURNQ_OPENAI_API": "chat",
        "TURNQ_AGENT": "shared.demo_agent:build_agent",
    }


def run(
    quick: bool = False, sessions: int | None = None, rounds: int | None = None
) -> dict[str, Any]:
    sessions = sessions or (300 if quick else 1000)
    rounds = rounds or (1 if quick else 2)
    io, cpu = [], []
    in_flight: list[int] = []
    with scratch_stack() as env, stub_llm_process() as stub:
        stub.configure(latency_s=LATENCY_S)
        ns = env["TURNQ_NAMESPACE"] + "cpu:"
        procs = [
            turnq_worker(env, "b3io", CONCURRENCY, **stub_env(stub.url)),
            # its own namespace (queue), so neither worker holds the other's kicks
            turnq_worker(env, "b3cpu", CONCURRENCY, **ECHO, TURNQ_NAMESPACE=ns),
        ]
        with running(procs):
            io_w, cpu_w = procs
            cpu_w.pause()
            drain_turnq(env, [io_w], [f"warm-io-{i}" for i in range(20)])
            io_w.pause()
            drain_turnq(env, [cpu_w], [f"warm-cpu-{i}" for i in range(20)])
            for r in range(rounds):
                cpu_w.pause()
                stub.reset()
                keys = [f"b3io-{r}-{i}" for i in range(sessions)]
                io.append(drain_turnq(env, [io_w], keys, also_meter={"stub": stub.proc.pid}))
                stats = stub.stats()
                in_flight.append(int(stats["max_in_flight"]))
                io_w.pause()
                cpu.append(drain_turnq(env, [cpu_w], [f"b3cpu-{r}-{i}" for i in range(sessions)]))
    io_rate = median([x["rate"] for x in io])
    cpu_rate = median([x["rate"] for x in cpu])
    return {
        "sessions": sessions,
        "concurrency": CONCURRENCY,
        "latency_s": LATENCY_S,
        "max_in_flight": max(in_flight),
        "in_flight_per_round": in_flight,
        "io_rate": io_rate,
        "cpu_bound_rate": cpu_rate,
        "ratio": io_rate / cpu_rate,
        "failed": sum(x["n"] - x["succeeded"] for x in io),
        "cpu_ms_per_turn": median([x["cpu_ms_per_turn"] for x in io]),
        "cpu_bound_cpu_ms_per_turn": median([x["cpu_ms_per_turn"] for x in cpu]),
        "peak_mb_per_worker": max(x["peak_mb_per_worker"] for x in io),
        "io_cores": io[-1]["usage"]["cores"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    d = run(False, args.sessions, args.rounds)
    rows = [
        ["max turns in flight (1 process)", str(d["max_in_flight"]), ">= 200"],
        ["turns/s, stub 1 s over HTTP", f"{d['io_rate']:.1f}", "-"],
        ["turns/s, instant model (CPU bound)", f"{d['cpu_bound_rate']:.1f}", "-"],
        ["ratio", f"{d['ratio']:.2f}", ">= 0.80"],
        ["CPU ms/turn (stub run, incl. stub)", f"{d['cpu_ms_per_turn']:.2f}", "-"],
        ["cores used (stub run)", str({k: round(v, 2) for k, v in d["io_cores"].items()}), "-"],
    ]
    print(table(f"B3 I/O-bound: {d['sessions']} sessions", ["what", "value", "target"], rows))


if __name__ == "__main__":
    main()
