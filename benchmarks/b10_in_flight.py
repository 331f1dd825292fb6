"""B10: turns in flight in ONE worker process, and the memory each one costs.

One worker process (threads pool, concurrency ``CONCURRENCY``: the cap on drains in
flight) runs one-turn sessions whose model is `turnq stub-llm` over HTTP streaming its
answer for ~10 s (10 tokens at 1 token/s; quick: 200 turns, 4 s).  Every turn is enqueued at once;
while they run, a sampler reads 4 times a second:

* in flight: the turns ``running`` in Postgres (claimed, holding their session lock, not
  yet committed) and the stub's open model calls (all from this one process);
* the worker's RSS, its threads and its open file descriptors.

Figures: the most turns in flight at once (target >= 1,000), RSS per 100 in flight
((RSS at the sample with the most running - RSS idle after a warm-up of 20 turns) /
(running / 100)), threads (a turn must not hold one) and the worker's CPU per turn.

    python -m benchmarks.b10_in_flight [--turns 1100] [--seconds 10]
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import psutil
import psycopg

from benchmarks.common import (
    enqueue_many,
    pg_url,
    running,
    scratch_stack,
    table,
    turnq_worker,
    wait_turns,
)
from benchmarks.resources import Meter
from tests.support.stub_llm import stub_llm_process

CONCURRENCY = 1200
RATE = 1.0  # tokens per second: seconds x RATE tokens per answer


class Sampler:
    """Samples in flight, RSS, threads and fds every ``period`` s on a thread."""

    def __init__(self, pid: int, stub: Any, database_url: str, period: float = 0.25) -> None:
        self.proc = psutil.Process(pid)
        self.stub = stub
        self.database_url = database_url
        self.period = period
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="b10-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while not self._stop.wait(self.period):
                row = conn.execute("SELECT count(*) FROM turns WHERE status = 'running'").fetchone()
                self.samples.append(
                    {
                        "t": time.monotonic(),
                        "stub_in_flight": float(self.stub.stats()["in_flight"]),
                        "running": float(row[0] if row else 0),
                        "rss_mb": self.proc.memory_info().rss / 2**20,
                        "threads": float(self.proc.num_threads()),
                        "fds": float(self.proc.num_fds()),
                    }
                )


def run(
    quick: bool = False, turns: int | None = None, seconds: float | None = None
) -> dict[str, Any]:
    turns = turns or (200 if quick else 1100)
    seconds = seconds or (4.0 if quick else 10.0)
    tokens = int(seconds * RATE)
    with scratch_stack() as env, stub_llm_process() as stub:
        stub.configure(answer_tokens=tokens, tokens_per_s=f"{RATE:g}")
        worker = turnq_worker(
            env,
            "b10",
            CONCURRENCY,
            **stub.worker_env("chat"),
            TURNQ_WORKER_CONCURRENCY=str(CONCURRENCY),
        )
        with running([worker]):
            warm = enqueue_many([f"b10warm-{i}" for i in range(20)])
            wait_turns(env, warm)
            time.sleep(1.0)
            idle = psutil.Process(worker.pid)
            idle_rss = idle.memory_info().rss / 2**20
            idle_threads = idle.num_threads()
            stub.reset()
            meter = Meter([worker.pid]).start()
            with Sampler(worker.pid, stub, pg_url(env)) as sampler:
                t0 = time.monotonic()
                ids = enqueue_many([f"b10-{i}" for i in range(turns)], parallel=32)
                enqueued_s = time.monotonic() - t0
                done = wait_turns(env, ids, timeout=seconds * 6 + 120)
            usage = meter.stop()
            stats = stub.stats()
    peak = max(sampler.samples, key=lambda s: (s["running"], -s["t"]))
    per_100 = (peak["rss_mb"] - idle_rss) / max(peak["running"], 1) * 100
    return {
        "turns": turns,
        "model_seconds": seconds,
        "concurrency": CONCURRENCY,
        "max_in_flight": int(peak["running"]),
        "max_model_calls_in_flight": int(stats["max_in_flight"]),
        "succeeded": done["succeeded"],
        "failed": turns - done["succeeded"],
        "enqueue_s": enqueued_s,
        "idle_rss_mb": idle_rss,
        "peak_rss_mb": max(s["rss_mb"] for s in sampler.samples),
        "rss_at_peak_mb": peak["rss_mb"],
        "rss_mb_per_100_in_flight": per_100,
        "idle_threads": idle_threads,
        "threads_at_peak": int(peak["threads"]),
        "max_threads": int(max(s["threads"] for s in sampler.samples)),
        "fds_at_peak": int(peak["fds"]),
        "peak_mb_per_worker": max(s["rss_mb"] for s in sampler.samples),
        "cpu_ms_per_turn": usage.cpu_ms_per(turns),
        "worker_cpu_ms_per_turn": usage.cpu_s["worker"] * 1000 / turns,
        "drain_s": done["last_finished"] - done["first_started"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, help="default 1100 (quick 200)")
    ap.add_argument("--seconds", type=float, help="model call length, default 10 (quick 4)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    d = run(args.quick, args.turns, args.seconds)
    rows = [
        ["turns in flight at once (1 process)", str(d["max_in_flight"]), ">= 1000"],
        ["model calls open at once", str(d["max_model_calls_in_flight"]), "-"],
        ["worker CPU ms per turn", f"{d['worker_cpu_ms_per_turn']:.1f}", "-"],
        ["failed turns", str(d["failed"]), "0"],
        [
            "RSS idle / at the peak (MiB)",
            f"{d['idle_rss_mb']:.0f} / {d['rss_at_peak_mb']:.0f}",
            "-",
        ],
        ["RSS per 100 in flight (MiB)", f"{d['rss_mb_per_100_in_flight']:.1f}", "bounded"],
        [
            "threads idle / at the peak / max",
            f"{d['idle_threads']} / {d['threads_at_peak']} / {d['max_threads']}",
            "no thread per turn",
        ],
        ["open fds at the peak", str(d["fds_at_peak"]), "-"],
        ["enqueue took (s)", f"{d['enqueue_s']:.1f}", "-"],
    ]
    title = f"B10 in flight: {d['turns']} turns, {d['model_seconds']:g} s streamed model, 1 process"
    print(table(title, ["what", "value", "target"], rows))


if __name__ == "__main__":
    main()
