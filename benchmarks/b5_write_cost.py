"""B5: the write cost of a turn with 10 vs 2,000 items of history; the naive design beside.

"Write cost" is the turn's commit: turnq's ``WorkerStore.complete`` (fence check,
INSERT of the turn's new items, UPDATE of the session's counters, UPDATE of the
turn), timed in-process against the scratch database, alone: the turn is marked
running by plain SQL, so nothing of the history's size is read before it (a claim or
load of 2,000 items right before evicts the CPU caches and slows whatever call comes
next; the commit timed right after the load is reported too, ``write_in_turn``).
The naive design's write is its UPDATE of the one JSON row holding the whole
history (``benchmarks.baseline_naive``).  Both on the same Postgres, the same engine
type, one connection, one pass at a time; within a pass the sizes alternate turn by
turn (10, 2000, 2000, 10, ...).  After every measured turn the session is put back
to its seeded size (outside the timing), so each turn sees exactly 10 or 2,000 items.

Beside the write, the read (turnq ``load_context``: the items after the compaction
mark, all of them here since nothing is compacted; naive: the JSON row) and the whole
in-process turn (turnq: bump fence + claim + load + commit; naive: load + save).  CPU
per write is this process plus the connection's Postgres backend.  Last, a few real
turns through a worker (instant model, context window raised so nothing compacts)
give the end-to-end run time of a turn on each size: the model input grows with the
history, which is what compaction is for.

    python -m benchmarks.b5_write_cost [--turns 200]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
from sqlalchemy import text

from benchmarks.b2_throughput import ECHO
from benchmarks.baseline_naive import NaiveStore
from benchmarks.common import (
    history_item,
    median,
    pg_url,
    running,
    scratch_stack,
    seed_sessions,
    table,
    turnq_worker,
)
from benchmarks.resources import Meter
from tests.support.stores import Stores

SIZES = (10, 2000)
SESSIONS = 5  # per size and design; turns rotate over them
NEW_ITEMS = [
    {"role": "user", "content": "hello"},
    history_item(1),
]
Timings = dict[str, float]


class Cpu:
    """CPU seconds of this process plus one Postgres backend."""

    def __init__(self, backend_pid: int) -> None:
        self.backend = psutil.Process(backend_pid)

    def now(self) -> float:
        t = self.backend.cpu_times()
        return time.process_time() + float(t.user + t.system)


async def _timed(cpu: Cpu, fn: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """Wall and CPU ms of one call (the caller turns the garbage collector off)."""
    c0, t0 = cpu.now(), time.perf_counter()
    await fn()
    return (time.perf_counter() - t0) * 1000, (cpu.now() - c0) * 1000


async def _turnq_turn(store: Stores, cpu: Cpu, sid: str, key: str, size: int) -> Timings:
    """A turn's store work as the worker does it: claim with its context ("load"), commit."""
    await store.producer.enqueue("bench", key, "hello", None)
    claimed: list[Any] = []

    async def claim() -> None:
        claimed.append(await store.worker.claim(sid, None, 5))

    load_ms, _ = await _timed(cpu, claim)
    turn, fence = claimed[0].turn, claimed[0].fence
    write_ms, _ = await _timed(
        cpu, lambda: store.worker.complete(turn, fence, NEW_ITEMS, "ok", None, None, None)
    )
    await _reset(store, sid, size)
    return {"write_in_turn": write_ms, "load": load_ms, "whole": load_ms + write_ms}


async def _turnq_write(store: Stores, cpu: Cpu, sid: str, key: str, size: int) -> Timings:
    """The commit alone: the turn is marked running by plain SQL (no context read), so
    nothing of the history's size is touched before the timed ``complete``."""
    turn, _, _ = await store.producer.enqueue("bench", key, "hello", None)
    bumped = await store.worker.claim(sid, None, None)  # a new holder's fence, no claim
    assert bumped is not None
    fence = bumped.fence
    async with store.db.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE turns SET status = 'running', fence = :f, started_at = now() WHERE id = :t"
            ),
            {"f": fence, "t": turn.id},
        )
    write_ms, write_cpu = await _timed(
        cpu, lambda: store.worker.complete(turn, fence, NEW_ITEMS, "ok", None, None, None)
    )
    await _reset(store, sid, size)
    return {"write": write_ms, "write_cpu": write_cpu}


async def _reset(store: Stores, sid: str, size: int) -> None:
    async with store.db.engine.begin() as conn:  # back to the seeded size, untimed
        await conn.execute(
            text("DELETE FROM items WHERE session_id = :sid AND position >= :n"),
            {"sid": sid, "n": size},
        )
        await conn.execute(
            text("UPDATE sessions SET item_count = :n WHERE id = :sid"), {"sid": sid, "n": size}
        )


async def _naive_turn(naive: NaiveStore, cpu: Cpu, sid: str, seeded: list[Any]) -> Timings:
    history: list[Any] = []

    async def load() -> None:
        history.extend(await naive.load(sid))

    load_ms, _ = await _timed(cpu, load)
    write_ms, write_cpu = await _timed(cpu, lambda: naive.save(sid, history + NEW_ITEMS))
    whole = load_ms + write_ms
    await naive.save(sid, seeded)  # back to the seeded size, untimed
    return {"write": write_ms, "write_cpu": write_cpu, "load": load_ms, "whole": whole}


async def _in_process(url: str, turns: int) -> dict[tuple[str, int], list[Timings]]:
    from shared.store import Database, create_engine

    engine = create_engine(url, pool_size=1)
    store, naive = Stores.of(Database(engine)), NaiveStore(engine)
    await naive.create()
    async with engine.connect() as conn:
        cpu = Cpu(int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()))
    plain = url.replace("+psycopg", "")
    tq = {n: seed_sessions(plain, SESSIONS, n, f"b5-{n}") for n in SIZES}
    histories = {n: [history_item(p) for p in range(n)] for n in SIZES}
    nv = {n: [await naive.seed(histories[n]) for _ in range(SESSIONS)] for n in SIZES}
    out: dict[tuple[str, int], list[Timings]] = defaultdict(list)
    warm = 10
    # Like timeit, with the garbage collector off: else a collection set off by one
    # step's allocations (a 2,000-item context is ~10^5 Python objects) lands in
    # whichever call comes next.  Refcounting still frees all but cycles.
    gc.collect()
    gc.disable()
    try:
        # one pass at a time: neither's I/O or cache footprint lands on the other
        for design in ("turnq_write", "turnq_turn", "naive"):
            for i in range(warm + turns):
                k = i % SESSIONS
                for n in SIZES if i % 2 else SIZES[::-1]:  # sizes alternate who goes first
                    if design == "naive":
                        t = await _naive_turn(naive, cpu, nv[n][k], histories[n])
                    else:
                        step = _turnq_write if design == "turnq_write" else _turnq_turn
                        t = await step(store, cpu, tq[n][k], f"b5-{n}-{k}", n)
                    if i >= warm:
                        out[design.split("_")[0], n].append(t)
    finally:
        gc.enable()
        await engine.dispose()
    return out


def _worker_turns(env: dict[str, str], turns: int) -> dict[str, Any]:
    """End to end through a worker: run time (started_at -> finished_at) per size."""
    from producer import Client

    for n in SIZES:
        seed_sessions(pg_url(env), turns, n, f"b5w-{n}")
    run_ms: dict[int, list[float]] = defaultdict(list)
    big = {"TURNQ_CONTEXT_WINDOW_TOKENS": "10000000", **ECHO}
    with running([turnq_worker(env, "b5", 8, **big)]) as (w,), Client.from_settings() as c:
        c.wait(c.enqueue("warm", "bench", "warm up").id, timeout=60)
        meter = Meter([w.pid]).start()
        for k in range(turns):
            for n in SIZES:
                r = c.wait(c.enqueue(f"b5w-{n}-{k}", "bench", "hello").id, timeout=120)
                run_ms[n].append((r.run_s or float("nan")) * 1000)
        usage = meter.stop()
    return {
        "run_ms": {n: median(v) for n, v in run_ms.items()},
        "cpu_ms_per_turn": usage.cpu_ms_per(turns * len(SIZES)),
        "peak_mb_per_worker": usage.peak_mb_per_worker,
    }


def run(quick: bool = False, turns: int | None = None) -> dict[str, Any]:
    turns = turns or (25 if quick else 200)
    with scratch_stack() as env:
        timings = asyncio.run(_in_process(env["TURNQ_DATABASE_URL"], turns))
        worker = _worker_turns(env, 2 if quick else 10)
    small, large = SIZES
    d: dict[str, Any] = {"turns": turns, "sizes": list(SIZES)}
    for design in ("turnq", "naive"):
        for n in SIZES:
            for what in ("write", "write_cpu", "load", "whole", "write_in_turn"):
                values = [t[what] for t in timings[design, n] if what in t]
                if not values:
                    continue
                # CPU: a mean, as the backend's CPU clock ticks every 10 ms
                d[f"{design}_{what}_ms_{n}"] = (
                    statistics.mean(values) if what == "write_cpu" else median(values)
                )
        d[f"{design}_ratio"] = d[f"{design}_write_ms_{large}"] / d[f"{design}_write_ms_{small}"]
        d[f"{design}_whole_ratio"] = (
            d[f"{design}_whole_ms_{large}"] / d[f"{design}_whole_ms_{small}"]
        )
    d["ratio"] = d["turnq_ratio"]
    d["worker_run_ms_10"] = worker["run_ms"][small]
    d["worker_run_ms_2000"] = worker["run_ms"][large]
    d["cpu_ms_per_turn"] = worker["cpu_ms_per_turn"]
    d["peak_mb_per_worker"] = worker["peak_mb_per_worker"]
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=200)
    d = run(False, ap.parse_args().turns)
    rows = []
    for design in ("turnq", "naive"):
        for what in ("write", "write_cpu", "write_in_turn", "load", "whole"):
            if f"{design}_{what}_ms_10" not in d:
                continue
            a, b = d[f"{design}_{what}_ms_10"], d[f"{design}_{what}_ms_2000"]
            rows.append([f"{design} {what}", f"{a:.3f}", f"{b:.3f}", f"{b / a:.2f}"])
    rows.append(
        ["turnq worker run", f"{d['worker_run_ms_10']:.2f}", f"{d['worker_run_ms_2000']:.2f}",
         f"{d['worker_run_ms_2000'] / d['worker_run_ms_10']:.2f}"]
    )  # fmt: skip
    title = f"B5 write cost per turn (ms, medians of {d['turns']}); target turnq write <= 1.2"
    print(table(title, ["what", "10 items", "2,000 items", "ratio"], rows))


if __name__ == "__main__":
    main()
