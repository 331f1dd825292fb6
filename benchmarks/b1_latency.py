"""B1: one turn end to end (enqueue -> result committed), instant model, idle system.

Three things in the same run, on the same Redis and Postgres, rounds interleaved so
machine noise hits all alike:

* raw Celery: a no-op task's round trip (apply_async -> AsyncResult.get via the
  Redis result backend), threads pool, acks_late, prefetch 1;
* turnq: ``client.enqueue`` then ``client.wait`` (worker process, same pool settings);
* the SDK without turnq: ``Runner.run(agent, text, session=SQLAlchemySession(...))``
  in this process on the same Postgres, with the same instant model (tests.agents:echo).

Both conversational paths rotate over 20 sessions whose histories grow alike.

    python -m benchmarks.b1_latency [--turns 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from benchmarks.common import (
    median,
    pct,
    pg_url,
    raw_worker,
    running,
    scratch_stack,
    table,
    turnq_worker,
)
from benchmarks.resources import Meter
from shared.loop import LoopThread

SESSIONS = 20
ECHO = {"TURNQ_AGENT": "tests.agents:echo"}


class SdkBaseline:
    """The Agents SDK's own SQLAlchemySession on the same Postgres, in this process."""

    def __init__(self, database_url: str) -> None:
        from agents import RunConfig
        from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession
        from sqlalchemy.ext.asyncio import create_async_engine

        from shared.registry import load_registry

        self.portal = LoopThread("sdk-baseline")
        self.engine = create_async_engine(
            database_url.replace("postgresql://", "postgresql+psycopg://", 1)
        )
        registry = load_registry(ECHO["TURNQ_AGENT"])  # the worker's own loading
        self.agent = registry.entry(None)
        self.config = RunConfig(tracing_disabled=True)
        self.sessions = [
            SQLAlchemySession(f"sdk-{k}", engine=self.engine, create_tables=True)
            for k in range(SESSIONS)
        ]

    def turn(self, i: int) -> float:
        """One turn on session i % 20; returns its milliseconds."""
        from agents import Runner

        t0 = time.perf_counter()
        self.portal.run(
            Runner.run(
                self.agent, f"hello {i}", session=self.sessions[i % SESSIONS],
                run_config=self.config,
            )
        )  # fmt: skip
        return (time.perf_counter() - t0) * 1000

    def close(self) -> None:
        self.portal.run(self.engine.dispose())
        self.portal.stop()


def run(quick: bool = False, turns: int | None = None, rounds: int | None = None) -> dict[str, Any]:
    turns = turns or (60 if quick else 200)
    rounds = rounds or (2 if quick else 3)
    os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
    with scratch_stack() as env:
        from benchmarks.raw_celery import noop
        from producer import Client

        raw_queue = env["TURNQ_NAMESPACE"] + "raw"
        noop.app.conf.task_default_queue = raw_queue
        procs = [turnq_worker(env, "b1", concurrency=8, **ECHO), raw_worker(env, raw_queue, 8)]
        with running(procs) as (tq, _raw), Client.from_settings() as client:
            sdk = SdkBaseline(pg_url(env))
            try:
                for i in range(20):  # warm every path
                    noop.apply_async(queue=raw_queue).get(timeout=10)
                    client.wait(client.enqueue("warm", "bench", "warm up").id, timeout=10)
                    sdk.turn(i)
                raw_ms: list[float] = []
                turn_ms: list[float] = []
                sdk_ms: list[float] = []
                rounds_out = []
                tq_cpu_s = sdk_cpu_s = 0.0
                peak = 0.0
                for r in range(rounds):
                    rr = []
                    for _ in range(turns):
                        t0 = time.perf_counter()
                        noop.apply_async(queue=raw_queue).get(timeout=10)
                        rr.append((time.perf_counter() - t0) * 1000)
                    meter = Meter([tq.pid], include_self=True).start()
                    tt = []
                    for i in range(turns):
                        t0 = time.perf_counter()
                        turn = client.enqueue(f"b1-{i % SESSIONS}", "bench", f"hello {r}-{i}")
                        client.wait(turn.id, timeout=10)
                        tt.append((time.perf_counter() - t0) * 1000)
                    usage = meter.stop()
                    tq_cpu_s += usage.total_cpu_s
                    peak = max(peak, usage.peak_mb_per_worker)
                    meter = Meter([], include_self=True).start()
                    ss = [sdk.turn(r * turns + i) for i in range(turns)]
                    sdk_cpu_s += meter.stop().total_cpu_s
                    rounds_out.append(
                        {
                            "raw_p50_ms": median(rr),
                            "turnq_p50_ms": median(tt),
                            "sdk_p50_ms": median(ss),
                        }
                    )
                    raw_ms += rr
                    turn_ms += tt
                    sdk_ms += ss
            finally:
                sdk.close()
    n = turns * rounds
    return {
        "raw_p50_ms": median(raw_ms),
        "raw_p99_ms": pct(raw_ms, 99),
        "turnq_p50_ms": median(turn_ms),
        "turnq_p99_ms": pct(turn_ms, 99),
        "sdk_p50_ms": median(sdk_ms),
        "sdk_p99_ms": pct(sdk_ms, 99),
        # worker + client + Redis + Postgres (both servers shared with the machine)
        "cpu_ms_per_turn": tq_cpu_s * 1000 / n,
        "sdk_cpu_ms_per_turn": sdk_cpu_s * 1000 / n,
        "peak_mb_per_worker": peak,
        "rounds": rounds_out,
        "turns": n,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    d = run(args.quick, args.turns, args.rounds)
    ratio = d["turnq_p50_ms"] / d["raw_p50_ms"]
    rows = [
        ["raw Celery no-op round trip", f"{d['raw_p50_ms']:.2f}", f"{d['raw_p99_ms']:.2f}",
         "-", "-", "baseline"],
        ["SDK SQLAlchemySession turn (in-process)", f"{d['sdk_p50_ms']:.2f}",
         f"{d['sdk_p99_ms']:.2f}", f"{d['sdk_p50_ms'] / d['raw_p50_ms']:.2f}x",
         f"{d['sdk_cpu_ms_per_turn']:.2f}", "baseline"],
        ["turnq turn end to end", f"{d['turnq_p50_ms']:.2f}", f"{d['turnq_p99_ms']:.2f}",
         f"{ratio:.2f}x", f"{d['cpu_ms_per_turn']:.2f}", "p50 <= 2x raw; < SDK"],
    ]  # fmt: skip
    title = f"B1 latency, {len(d['rounds'])} interleaved rounds x {d['turns'] // len(d['rounds'])}"
    print(table(title, ["what", "p50 ms", "p99 ms", "vs raw", "CPU ms/turn", "target"], rows))
    print("per-round medians:", d["rounds"])


if __name__ == "__main__":
    main()
