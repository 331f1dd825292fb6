"""B6: chat-turn latency with and without a backlog of 1,000 pending compactions.

Summarization has its own queue and worker pool (I7), so a backlog there must not
slow chat.  One run, phases interleaved: idle, backlog, idle, backlog.  The
summarizer is deliberately slow (0.2 s per compaction) so the backlog stays.

    python -m benchmarks.b6_compaction_backlog [--turns 300] [--backlog 1000] [--rounds 3]
    benchmarks.b6_compaction_backlog.run(quick=True) -> dict  (for benchmarks.run)
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import redis

from benchmarks.common import (
    median,
    pct,
    pg_url,
    running,
    scratch_stack,
    seed_sessions,
    table,
    turnq_worker,
)
from benchmarks.resources import Meter
from ops.processes import WORKER_READY, ManagedProcess, worker_command

POLICY = {
    "TURNQ_CONTEXT_WINDOW_TOKENS": "4000",
    "TURNQ_COMPACT_TRIGGER": "0.5",
    "TURNQ_COMPACT_TARGET": "0.25",
    "TURNQ_SUMMARIZER": "tests.agents:slow_extractive",
    "TEST_SUMMARIZER_LATENCY_S": "0.2",
}


def chat_latencies(client: object, n: int, tag: str) -> list[float]:
    from producer import Client

    assert isinstance(client, Client)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        turn = client.enqueue(f"b6-{tag}-{i % 30}", "bench", f"hello {i}")
        client.wait(turn.id, timeout=30)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def run(
    quick: bool = False,
    turns: int | None = None,
    backlog: int | None = None,
    rounds: int | None = None,
) -> dict[str, Any]:
    turns = turns or (60 if quick else 300)
    backlog = backlog or (200 if quick else 1000)
    rounds = rounds or (1 if quick else 3)
    with scratch_stack() as env:
        env = {**env, **POLICY}
        from producer import Client
        from shared import keys
        from shared.celery_app import make_celery
        from shared.settings import Settings

        ns = env["TURNQ_NAMESPACE"]
        chat = turnq_worker(env, "b6chat", concurrency=8, TURNQ_AGENT="tests.agents:echo")
        summ = ManagedProcess(
            worker_command(
                name="b6summ", queues=[ns + "summarize"], concurrency=4, loglevel="WARNING"
            ),
            env,
            "b6summ",
            ready=WORKER_READY,
        )
        idle: list[float] = []
        busy: list[float] = []
        depth: list[int] = []
        per_round: list[tuple[float, float]] = []
        with running([chat, summ]):
            app = make_celery(Settings(namespace=ns))
            r = redis.Redis.from_url(env["TURNQ_REDIS_URL"])
            sessions = seed_sessions(pg_url(env), backlog, 40, "backlog")
            with Client.from_settings() as client:
                chat_latencies(client, 30, "warm")
                meter = Meter([chat.pid]).start()
                for rnd in range(rounds):
                    idle_r = chat_latencies(client, turns, f"idle{rnd}")
                    idle += idle_r
                    for sid in sessions:
                        app.send_task(keys.COMPACT_TASK, args=[sid])
                    depth.append(int(r.llen(ns + "summarize")))
                    busy_r = chat_latencies(client, turns, f"busy{rnd}")
                    busy += busy_r
                    per_round.append((pct(idle_r, 99), pct(busy_r, 99)))
                    depth.append(int(r.llen(ns + "summarize")))
                    r.delete(ns + "summarize")  # drop the rest before the next idle phase
                    time.sleep(1.0)
                usage = meter.stop()
            r.close()
    return {
        "turns": turns,
        "backlog": backlog,
        "rounds": rounds,
        "idle_p50_ms": median(idle),
        "idle_p99_ms": pct(idle, 99),
        "busy_p50_ms": median(busy),
        "busy_p99_ms": pct(busy, 99),
        "ratio": pct(busy, 99) / pct(idle, 99),
        "round_ratio": median([b / a for a, b in per_round]),
        "queue_depth": depth,
        "cpu_ms_per_turn": usage.cpu_ms_per(len(idle) + len(busy)),
        "peak_mb_per_worker": usage.peak_mb_per_worker,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=300)
    ap.add_argument("--backlog", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    d = run(False, args.turns, args.backlog, args.rounds)
    rows = [
        ["no backlog", f"{d['idle_p50_ms']:.2f}", f"{d['idle_p99_ms']:.2f}", "-", ""],
        [
            f"{args.backlog} compactions pending",
            f"{d['busy_p50_ms']:.2f}",
            f"{d['busy_p99_ms']:.2f}",
            f"{d['ratio']:.2f}x",
            "p99 within 10% (<= 1.10x)",
        ],
    ]
    print(
        table(
            "B6 chat latency vs compaction backlog (ms)",
            ["phase", "p50", "p99", "p99 ratio", "target"],
            rows,
        )
    )
    print("summarize queue depth at start/end of each busy phase:", d["queue_depth"])
    print("median of per-round p99 ratios:", round(d["round_ratio"], 3))


if __name__ == "__main__":
    main()
