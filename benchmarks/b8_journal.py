"""B8: what the step journal (I14) costs a turn of 2 model calls and 1 tool call.

The turn: the demo agent and the offline model (instant), asked for the weather: model
call 1 calls ``get_weather``, the tool answers, model call 2 answers from its output.
With the journal on, that is three journal writes (``turnq_journal``): each model
response and the tool's output as it completes (the tool is idempotent, so it has no
``started`` row; a non-idempotent tool would add one write).

Two arms in one run, on the same Redis and Postgres, one worker process each in its own
namespace: ``on`` (``TURNQ_JOURNAL=true``, the default) and ``off``
(``TURNQ_JOURNAL=false``).  Turns are sequential (one in flight: the latency of an idle
system, as B1) in blocks of ``block`` turns per arm, the arms alternating in ABBA order
(on, off, off, on, ...) so drift and load spikes on the shared machine hit both alike.

Figures:

* worker CPU ms per turn, on / off (target <= 1.10): each worker's CPU (process tree)
  over its own blocks only, divided by the turns it ran;
* end-to-end latency p50, on - off (target <= 2 ms): ``client.enqueue`` to
  ``client.wait`` returning, per turn;
* journal round trips per turn: calls of ``turnq_journal`` per ``on`` turn, from
  Postgres's own count (``pg_stat_user_functions``, ``track_functions=pl`` on the scratch
  database), beside the journal rows per turn; each call is one statement on an
  autocommit connection, i.e. one round trip.  Its server-side mean time is reported too.
  The ``off`` arm must write no rows.

    python -m benchmarks.b8_journal [--rounds 8] [--block 50]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import psycopg

from benchmarks.common import (
    median,
    pct,
    pg_url,
    running,
    scratch_stack,
    table,
    turnq_worker,
)
from benchmarks.resources import Meter

ARMS = {"on": "true", "off": "false"}
QUESTION = "What is the weather in Austin?"
SESSIONS = 10  # per arm; turns rotate over them, so histories grow alike in both arms


def _journal_calls(url: str, expected: int, timeout: float = 20.0) -> tuple[int, float]:
    """(calls, total ms) of turnq_journal, once Postgres has flushed the workers' counts
    (backends report function statistics within about a second of going idle)."""
    deadline = time.monotonic() + timeout
    last: tuple[int, float] = (0, 0.0)
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT COALESCE(sum(calls), 0), COALESCE(sum(total_time), 0) "
                "FROM pg_stat_user_functions WHERE funcname = 'turnq_journal'"
            ).fetchone()
            assert row is not None
            now = (int(row[0]), float(row[1]))
            if (now[0] >= expected and now == last) or time.monotonic() > deadline:
                return now
            last = now
            time.sleep(1.0)


def _turn_shape(url: str, ns: str) -> dict[str, float]:
    """Per turn of an arm: model calls (usage requests), tool calls, journal rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), avg((t.usage->>'requests')::int), "
            "  (SELECT count(*) FROM items i JOIN sessions s2 ON s2.id = i.session_id "
            "   WHERE s2.namespace = %(ns)s AND i.item->>'type' = 'function_call'), "
            "  (SELECT count(*) FROM turn_steps j JOIN turns t2 ON t2.id = j.turn_id "
            "   JOIN sessions s3 ON s3.id = t2.session_id WHERE s3.namespace = %(ns)s), "
            "  count(*) FILTER (WHERE t.status = 'succeeded') "
            "FROM turns t JOIN sessions s ON s.id = t.session_id WHERE s.namespace = %(ns)s",
            {"ns": ns},
        ).fetchone()
    assert row is not None
    turns = max(int(row[0]), 1)
    return {
        "turns": int(row[0]),
        "succeeded": int(row[4]),
        "model_calls_per_turn": float(row[1] or 0),
        "tool_calls_per_turn": int(row[2]) / turns,
        "journal_rows_per_turn": int(row[3]) / turns,
    }


def run(quick: bool = False, rounds: int | None = None, block: int | None = None) -> dict[str, Any]:
    rounds = rounds or (2 if quick else 8)
    block = block or (10 if quick else 50)
    os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
    with scratch_stack() as env:
        from producer import Client
        from shared.settings import Settings

        url = pg_url(env)
        db = url.rsplit("/", 1)[1]
        with psycopg.connect(url, autocommit=True) as conn:  # for the workers' backends
            conn.execute(f"ALTER DATABASE \"{db}\" SET track_functions = 'pl'")
        ns = env["TURNQ_NAMESPACE"]
        spaces = {arm: f"{ns}{arm}:" for arm in ARMS}
        workers = {
            arm: turnq_worker(env, f"b8{arm}", 8, TURNQ_JOURNAL=flag, TURNQ_NAMESPACE=spaces[arm])
            for arm, flag in ARMS.items()
        }
        latency: dict[str, list[float]] = {arm: [] for arm in ARMS}
        cpu_s = dict.fromkeys(ARMS, 0.0)
        turns = dict.fromkeys(ARMS, 0)
        peak = 0.0
        per_round: list[dict[str, float]] = []
        with running(list(workers.values())):
            clients = {
                arm: Client.from_settings(Settings(namespace=s)) for arm, s in spaces.items()
            }
            try:

                def one(arm: str, i: int) -> float:
                    client = clients[arm]
                    t0 = time.perf_counter()
                    turn = client.enqueue(f"b8{arm}-{i % SESSIONS}", "bench", QUESTION)
                    done = client.wait(turn.id, timeout=30)
                    ms = (time.perf_counter() - t0) * 1000
                    if done.status != "succeeded":
                        raise RuntimeError(f"B8 turn {turn.id} ended {done.status}: {done.error}")
                    return ms

                for arm in ARMS:  # warm every path (and each session's first turn)
                    for i in range(SESSIONS):
                        one(arm, i)
                warm = len(ARMS) * SESSIONS
                for r in range(rounds):
                    order = list(ARMS) if r % 2 == 0 else list(reversed(ARMS))
                    p50: dict[str, float] = {}
                    for arm in order:
                        meter = Meter([workers[arm].pid]).start()
                        ms = [one(arm, r * block + i) for i in range(block)]
                        usage = meter.stop()
                        cpu_s[arm] += usage.cpu_s["worker"]
                        peak = max(peak, usage.peak_mb_per_worker)
                        turns[arm] += block
                        latency[arm] += ms
                        p50[arm] = median(ms)
                    per_round.append({"p50_on_ms": p50["on"], "p50_off_ms": p50["off"]})
            finally:
                for client in clients.values():
                    client.close()
        shape = {arm: _turn_shape(url, s) for arm, s in spaces.items()}
        on_turns = shape["on"]["turns"]
        calls, total_ms = _journal_calls(url, int(on_turns * shape["on"]["journal_rows_per_turn"]))
    cpu = {arm: cpu_s[arm] * 1000 / turns[arm] for arm in ARMS}
    return {
        "rounds": rounds,
        "block": block,
        "turns_per_arm": turns["on"],
        "warm_turns": warm,
        "cpu_on_ms": cpu["on"],
        "cpu_off_ms": cpu["off"],
        "cpu_ratio": cpu["on"] / cpu["off"],
        "p50_on_ms": median(latency["on"]),
        "p50_off_ms": median(latency["off"]),
        "p50_diff_ms": median(latency["on"]) - median(latency["off"]),
        "p99_on_ms": pct(latency["on"], 99),
        "p99_off_ms": pct(latency["off"], 99),
        "round_trips_per_turn": calls / on_turns if on_turns else float("nan"),
        "journal_write_server_ms": total_ms / calls if calls else float("nan"),
        "journal_rows_per_turn": shape["on"]["journal_rows_per_turn"],
        "off_journal_rows": shape["off"]["journal_rows_per_turn"] * shape["off"]["turns"],
        "model_calls_per_turn": shape["on"]["model_calls_per_turn"],
        "tool_calls_per_turn": shape["on"]["tool_calls_per_turn"],
        "shape": shape,
        "failed": sum(s["turns"] - s["succeeded"] for s in shape.values()),
        "rounds_p50": per_round,
        # the row's CPU column: the journaled turn's worker CPU (only the worker is metered)
        "cpu_ms_per_turn": cpu["on"],
        "peak_mb_per_worker": peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--block", type=int, default=50, help="turns per arm per round")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    d = run(args.quick, None if args.quick else args.rounds, None if args.quick else args.block)
    rows = [
        ["worker CPU ms/turn", f"{d['cpu_on_ms']:.2f}", f"{d['cpu_off_ms']:.2f}",
         f"{d['cpu_ratio']:.3f}x", "<= 1.10x", "yes" if d["cpu_ratio"] <= 1.1 else "NO"],
        ["latency p50 ms", f"{d['p50_on_ms']:.2f}", f"{d['p50_off_ms']:.2f}",
         f"{d['p50_diff_ms']:+.2f} ms", "<= 2 ms", "yes" if d["p50_diff_ms"] <= 2 else "NO"],
        ["latency p99 ms", f"{d['p99_on_ms']:.2f}", f"{d['p99_off_ms']:.2f}",
         f"{d['p99_on_ms'] - d['p99_off_ms']:+.2f} ms", "-", "-"],
        ["journal round trips/turn", f"{d['round_trips_per_turn']:.2f}", "0", "-",
         "1 per write", "yes" if d["round_trips_per_turn"] == d["journal_rows_per_turn"]
         else "NO"],
    ]  # fmt: skip
    print(
        table(
            f"B8 step journal on vs off: {d['turns_per_arm']} turns per arm "
            f"({d['model_calls_per_turn']:.0f} model calls, {d['tool_calls_per_turn']:.0f} tool "
            f"call per turn), {d['rounds']} rounds of {d['block']}",
            ["figure", "journal on", "journal off", "difference", "target", "met?"],
            rows,
        )
    )
    print(
        f"journal rows per turn {d['journal_rows_per_turn']:.2f} (off arm: "
        f"{d['off_journal_rows']:.0f} rows); turnq_journal server time "
        f"{d['journal_write_server_ms']:.3f} ms per call; per round p50 on/off: "
        + ", ".join(f"{r['p50_on_ms']:.1f}/{r['p50_off_ms']:.1f}" for r in d["rounds_p50"])
    )


if __name__ == "__main__":
    main()
