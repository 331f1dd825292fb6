"""B1: one turn end to end (enqueue -> result committed), instant model, idle system.

Beside it, in the same run and on the same Redis: a raw Celery no-op round trip
(apply_async -> AsyncResult.get via the Redis result backend), same pool settings.
Rounds are interleaved so machine noise hits both alike.

    python -m benchmarks.b1_latency [--turns 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import median, pct, raw_worker, scratch_stack, table, turnq_worker


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with scratch_stack() as env:
        from benchmarks.raw_celery import noop
        from producer import Client

        raw_queue = env["TURNQ_NAMESPACE"] + "raw"
        noop.app.conf.task_default_queue = raw_queue
        tq = turnq_worker(env, "b1", concurrency=8, TURNQ_AGENT="tests.agents:echo")
        raw = raw_worker(env, raw_queue, concurrency=8)
        tq.start()
        try:
            raw.start()
            client = Client.from_settings()
        except BaseException:  # never leave workers behind on a failed setup
            tq.stop()
            raw.stop()
            raise
        try:
            for _ in range(20):  # warm both paths
                noop.apply_async(queue=raw_queue).get(timeout=10)
                client.wait(client.enqueue("warm", "bench", "warm up").id, timeout=10)
            raw_ms: list[float] = []
            turn_ms: list[float] = []
            per_round = []
            for r in range(args.rounds):
                rr, tt = [], []
                for _ in range(args.turns):
                    t0 = time.perf_counter()
                    noop.apply_async(queue=raw_queue).get(timeout=10)
                    rr.append((time.perf_counter() - t0) * 1000)
                for i in range(args.turns):
                    t0 = time.perf_counter()
                    turn = client.enqueue(f"b1-{r}-{i % 20}", "bench", f"hello {i}")
                    client.wait(turn.id, timeout=10)
                    tt.append((time.perf_counter() - t0) * 1000)
                per_round.append((median(rr), median(tt)))
                raw_ms += rr
                turn_ms += tt
        finally:
            client.close()
            tq.stop()
            raw.stop()
    rows = [
        [
            "raw Celery no-op round trip",
            f"{median(raw_ms):.2f}",
            f"{pct(raw_ms, 99):.2f}",
            "-",
            "baseline",
        ],
        [
            "turnq turn end to end",
            f"{median(turn_ms):.2f}",
            f"{pct(turn_ms, 99):.2f}",
            f"{median(turn_ms) / median(raw_ms):.2f}x",
            "p50 <= 2x raw",
        ],
    ]
    print(
        table(
            f"B1 latency, {args.rounds} interleaved rounds x {args.turns}",
            ["what", "p50 ms", "p99 ms", "ratio", "target"],
            rows,
        )
    )
    print("per-round medians (raw, turnq):", [(round(a, 2), round(b, 2)) for a, b in per_round])


if __name__ == "__main__":
    main()
