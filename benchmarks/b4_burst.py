"""B4: a burst of 100 turns on one session, instant model.

The worker is paused while the 100 turns are enqueued (so all are waiting when it
starts), then resumed.  Read back through the client:

* FIFO: turns ran one at a time, in enqueue order: sorted by started_at and by
  finished_at they are in seq order, each started after the previous one finished,
  and each output answers its own input;
* gap: the median time between one turn's finished_at and the next one's started_at
  (both Postgres timestamps), i.e. the worker's hand-over cost between turns
  of one session.  Since the worker completes a turn and claims the next in one
  statement (``WorkerStore.complete``), both timestamps are that transaction's
  ``now()`` and the gap is 0 by construction; so the cycle is reported beside it:
  the median time from one turn's finished_at to the next one's, i.e. a whole turn
  on one session with the instant model, hand-over included.

    python -m benchmarks.b4_burst [--turns 100]
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

from benchmarks.b2_throughput import ECHO, drain_turnq
from benchmarks.common import median, pct, running, scratch_stack, table, turnq_worker

TARGET_GAP_MS = 5.0


def run(quick: bool = False, turns: int = 100, rounds: int | None = None) -> dict[str, Any]:
    rounds = rounds or (1 if quick else 3)
    gaps: list[float] = []
    cycles: list[
        float
    ] = []  # finished_at to the next finished_at: a whole turn, hand-over included
    fifo = True
    drains = []
    with scratch_stack() as env:
        from producer import Client

        with running([turnq_worker(env, "b4", 16, **ECHO)]) as workers:
            drain_turnq(env, workers, [f"warm-{i}" for i in range(20)])
            with Client.from_settings() as client:
                for r in range(rounds):
                    key = f"b4-burst-{r}"
                    drains.append(drain_turnq(env, workers, [key] * turns))
                    results = client.turns(key, "bench")
                    fifo = fifo and _fifo(results)
                    pairs = [
                        (a, b)
                        for a, b in itertools.pairwise(results)
                        if a.finished_at and b.started_at and b.finished_at
                    ]
                    gaps += [
                        (b.started_at - a.finished_at).total_seconds() * 1000 for a, b in pairs
                    ]
                    cycles += [
                        (b.finished_at - a.finished_at).total_seconds() * 1000 for a, b in pairs
                    ]
    gap = median(gaps)
    return {
        "turns": turns,
        "rounds": rounds,
        "fifo": fifo,
        "succeeded": sum(d["succeeded"] for d in drains),
        "gap_p50_ms": gap,
        "gap_p99_ms": pct(gaps, 99),
        "cycle_p50_ms": median(cycles),
        "cycles_ms": cycles[-(turns - 1) :],  # the last burst, turn by turn (for the plot)
        "rate": median([d["rate"] for d in drains]),
        "met": fifo and gap <= TARGET_GAP_MS,
        "cpu_ms_per_turn": median([d["cpu_ms_per_turn"] for d in drains]),
        "peak_mb_per_worker": max(d["peak_mb_per_worker"] for d in drains),
    }


def _fifo(results: list[Any]) -> bool:
    """One at a time, in seq order, each answering its own input."""
    if any(r.started_at is None or r.finished_at is None for r in results):
        return False
    seqs = [r.seq for r in results]
    by_start = [r.seq for r in sorted(results, key=lambda r: r.started_at)]
    by_end = [r.seq for r in sorted(results, key=lambda r: r.finished_at)]
    serial = all(b.started_at >= a.finished_at for a, b in itertools.pairwise(results))
    answered = all(r.output and r.input in r.output for r in results)
    return seqs == sorted(seqs) == by_start == by_end and serial and answered


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    d = run(False, args.turns, args.rounds)
    rows = [
        ["FIFO (enqueue order == run order)", str(d["fifo"]), "True"],
        ["median gap finished -> next started", f"{d['gap_p50_ms']:.2f} ms", "<= 5 ms"],
        ["p99 gap", f"{d['gap_p99_ms']:.2f} ms", "-"],
        ["median cycle finished -> next finished", f"{d['cycle_p50_ms']:.2f} ms", "-"],
        ["turns/s on one session", f"{d['rate']:.1f}", "-"],
        ["CPU ms/turn", f"{d['cpu_ms_per_turn']:.2f}", "-"],
    ]
    print(
        table(f"B4 burst of {d['turns']} turns on one session", ["what", "value", "target"], rows)
    )


if __name__ == "__main__":
    main()
