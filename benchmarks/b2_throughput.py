"""B2: throughput: 1,000 one-turn sessions, instant model, 2 worker processes.

Beside it, in the same run, on the same Redis: the raw Celery no-op drain rate, same
pool settings (threads, same concurrency, prefetch 1, acks_late), 2 processes, the
same number of tasks.  Rounds alternate baseline and turnq.  A third group shows
turnq with Celery task events on (``TURNQ_TASK_EVENTS=true``, Flower's task list): off
by default (decision 0010), as the raw baseline sends none.

Drain rate, for both alike: the workers are started and paused (SIGSTOP); every
task / turn is enqueued; the workers are resumed; rate = tasks / (last completion
timestamp - resume time).  The completion timestamp is written by the worker side:
the turn's ``finished_at`` in Postgres, the no-op's ``date_done`` in the Redis result
backend (so the baseline also stores a result per task, as turnq commits one).

    python -m benchmarks.b2_throughput [--sessions 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.common import (
    enqueue_many,
    median,
    raw_worker,
    running,
    scratch_stack,
    table,
    turnq_worker,
    wait_raw_results,
    wait_turns,
)
from benchmarks.resources import Meter, server_pids
from ops.processes import ManagedProcess

PROCESSES = 2
CONCURRENCY = 16
ECHO = {"TURNQ_AGENT": "tests.agents:echo"}


def drain_turnq(
    env: dict[str, str],
    workers: Sequence[ManagedProcess],
    keys: Sequence[str],
    also_meter: dict[str, int] | None = None,
    servers: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Enqueue one turn per key with the workers paused, resume them, time the drain.

    ``also_meter``: more processes whose CPU counts (role -> pid), e.g. a stub model;
    ``servers``: the Redis and Postgres pids (default: those of ``benchmarks.common``)."""
    for w in workers:
        w.pause()
    try:
        ids = enqueue_many(keys, namespace=workers[0].env["TURNQ_NAMESPACE"])
    finally:
        meter = Meter(
            [w.pid for w in workers], servers={**(servers or server_pids()), **(also_meter or {})}
        )
        meter.start()
        t0 = time.time()
        for w in workers:
            w.resume()
    done = wait_turns(env, ids)
    usage = meter.stop()
    elapsed = done["last_finished"] - t0
    return {
        "n": len(ids),
        "succeeded": done["succeeded"],
        "elapsed_s": elapsed,
        "rate": len(ids) / elapsed,
        "cpu_ms_per_turn": usage.cpu_ms_per(len(ids)),
        "peak_mb_per_worker": usage.peak_mb_per_worker,
        "usage": usage.as_dict(),
    }


def drain_raw(workers: Sequence[ManagedProcess], queue: str, n: int) -> dict[str, Any]:
    from benchmarks.raw_celery import noop

    for w in workers:
        w.pause()
    try:
        ids = [noop.apply_async(queue=queue).id for _ in range(n)]
    finally:
        meter = Meter([w.pid for w in workers]).start()
        t0 = time.time()
        for w in workers:
            w.resume()
    last = wait_raw_results(ids)
    usage = meter.stop()
    elapsed = last - t0
    return {
        "n": n,
        "elapsed_s": elapsed,
        "rate": n / elapsed,
        "cpu_ms_per_turn": usage.cpu_ms_per(n),
        "peak_mb_per_worker": usage.peak_mb_per_worker,
        "usage": usage.as_dict(),
    }


def run(
    quick: bool = False, sessions: int | None = None, rounds: int | None = None
) -> dict[str, Any]:
    sessions = sessions or (300 if quick else 1000)
    rounds = rounds or (1 if quick else 2)
    with scratch_stack() as env:
        raw_q = env["TURNQ_NAMESPACE"] + "raw"
        events = {"TURNQ_NAMESPACE": env["TURNQ_NAMESPACE"] + "ev:", "TURNQ_TASK_EVENTS": "true"}
        n = PROCESSES
        procs = [
            *(turnq_worker(env, f"b2t{i}", CONCURRENCY, **ECHO) for i in range(n)),
            *(raw_worker(env, raw_q, CONCURRENCY, name=f"b2r{i}") for i in range(n)),
            # turnq with Celery task events (Flower's task list; off by default), own queue
            *(turnq_worker(env, f"b2e{i}", CONCURRENCY, **ECHO, **events) for i in range(n)),
        ]
        with running(procs):
            tq, raw, tq_events = procs[:n], procs[n : 2 * n], procs[2 * n :]
            raws, turnqs, evented = [], [], []
            for r in range(-1, rounds):  # round -1 warms every group up, unrecorded
                size = 50 if r < 0 else sessions
                for w in procs:  # the idle groups sleep while one is measured
                    w.pause()
                a = drain_raw(raw, raw_q, size)
                for w in raw:
                    w.pause()
                b = drain_turnq(env, tq, [f"b2-{r}-{i}" for i in range(size)])
                for w in tq:
                    w.pause()
                c = drain_turnq(env, tq_events, [f"b2e-{r}-{i}" for i in range(size)])
                if r >= 0:
                    raws.append(a)
                    turnqs.append(b)
                    evented.append(c)
            for w in procs:
                w.resume()
    raw_rate = median([x["rate"] for x in raws])
    tq_rate = median([x["rate"] for x in turnqs])
    events_rate = median([x["rate"] for x in evented])
    return {
        "sessions": sessions,
        "processes": PROCESSES,
        "concurrency": CONCURRENCY,
        "raw_rate": raw_rate,
        "turnq_rate": tq_rate,
        "ratio": tq_rate / raw_rate,
        "events_rate": events_rate,
        "events_ratio": events_rate / raw_rate,
        "failed": sum(x["n"] - x["succeeded"] for x in [*turnqs, *evented]),
        "raw_cpu_ms_per_task": median([x["cpu_ms_per_turn"] for x in raws]),
        "cpu_ms_per_turn": median([x["cpu_ms_per_turn"] for x in turnqs]),
        "events_cpu_ms_per_turn": median([x["cpu_ms_per_turn"] for x in evented]),
        "peak_mb_per_worker": max(x["peak_mb_per_worker"] for x in turnqs),
        "rounds": [
            {"raw": a, "turnq": b, "turnq_task_events": c}
            for a, b, c in zip(raws, turnqs, evented, strict=True)
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    d = run(args.quick, args.sessions, args.rounds)
    rows = [
        ["raw Celery no-op drain", f"{d['raw_rate']:.1f}", f"{d['raw_cpu_ms_per_task']:.2f}", "-"],
        [
            "turnq turns drained",
            f"{d['turnq_rate']:.1f}",
            f"{d['cpu_ms_per_turn']:.2f}",
            f"{d['ratio']:.2f} (target >= 0.50)",
        ],
        [
            "turnq, task events on",
            f"{d['events_rate']:.1f}",
            f"{d['events_cpu_ms_per_turn']:.2f}",
            f"{d['events_ratio']:.2f}",
        ],
    ]
    title = f"B2 throughput: {d['sessions']} sessions, {PROCESSES} processes x {CONCURRENCY}"
    print(table(title, ["what", "per s", "CPU ms/turn", "ratio"], rows))


if __name__ == "__main__":
    main()
