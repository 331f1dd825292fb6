"""Run every benchmark (B1..B10) in one go and print one table of figures against targets.

    python -m benchmarks.run                 # full: default counts, 3 repeats, medians
    python -m benchmarks.run --quick         # smaller counts, 1 repeat: under ~2 minutes
    python -m benchmarks.run --only B2,B4 --repeat 2
    turnq bench --quick                      # the same, from the CLI

Each benchmark module exposes ``run(quick) -> dict``; a run that raises is reported
as an error row and the others go on.  With ``--repeat N`` every figure is the
median over the N repeats (booleans: all of them).  Writes
``<out>/summary.json`` (machine, arguments, rows, every repeat's raw result) and the
PNG plots (``benchmarks.plots``) to ``<out>`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import table

RESULTS = Path(__file__).resolve().parent / "results"
WHAT = {
    "B1": "one turn end to end, idle, p50/p99",
    "B2": "throughput, one-turn sessions, 2 processes",
    "B3": "I/O-bound: stub model, 1 s over HTTP",
    "B4": "burst of 100 turns on one session",
    "B5": "commit cost at 10 vs 2,000 items",
    "B6": "chat p99 with compactions pending",
    "B7": "scaling 1 -> 2 -> 4 processes",
    "B8": "step journal on vs off: 2 model calls + 1 tool call",
    "B9": "production shape: tool call + 300 tokens at ~80/s, SSE reader",
    "B10": "turns in flight in one process, 10 s streamed model",
}
MODULES = {
    "B1": "benchmarks.b1_latency",
    "B2": "benchmarks.b2_throughput",
    "B3": "benchmarks.b3_io_bound",
    "B4": "benchmarks.b4_burst",
    "B5": "benchmarks.b5_write_cost",
    "B6": "benchmarks.b6_compaction_backlog",
    "B7": "benchmarks.b7_scaling",
    "B8": "benchmarks.b8_journal",
    "B9": "benchmarks.b9_production_shape",
    "B10": "benchmarks.b10_in_flight",
}
HEADER = [
    "id", "what", "figure", "baseline", "ratio", "target", "met?", "CPU ms/turn",
    "peak MB/worker",
]  # fmt: skip
Row = tuple[str, str, str, str, bool | None]  # figure, baseline, ratio, target, met


def aggregate(runs: Sequence[Any]) -> Any:
    """Medians of numbers, all() of booleans, recursively through dicts; else the last."""
    first = runs[0]
    if isinstance(first, bool):
        return all(runs)
    if isinstance(first, int | float) and all(isinstance(r, int | float) for r in runs):
        return statistics.median(runs)
    if isinstance(first, dict) and all(isinstance(r, dict) for r in runs):
        return {k: aggregate([r[k] for r in runs if k in r]) for k in first}
    return runs[-1]


def _b1(d: dict[str, Any]) -> Row:
    ratio = d["turnq_p50_ms"] / d["raw_p50_ms"]
    sdk = d.get("sdk_p50_ms")
    below_sdk = sdk is None or d["turnq_p50_ms"] < sdk
    return (
        f"p50 {d['turnq_p50_ms']:.1f} / p99 {d['turnq_p99_ms']:.1f} ms",
        f"raw p50 {d['raw_p50_ms']:.1f} ms; SDK p50 "
        + (f"{sdk:.1f} ms" if sdk is not None else "n/a"),
        f"{ratio:.2f}x raw",
        "p50 <= 2x raw; < SDK",
        ratio <= 2 and below_sdk,
    )


def _b2(d: dict[str, Any]) -> Row:
    return (
        f"{d['turnq_rate']:.0f} turns/s ({d['events_rate']:.0f} task events on)",
        f"raw no-op {d['raw_rate']:.0f}/s",
        f"{d['ratio']:.2f}",
        ">= 0.50 of raw",
        d["ratio"] >= 0.5,
    )


def _b3(d: dict[str, Any]) -> Row:
    return (
        f"{d['max_in_flight']:.0f} in flight; {d['io_rate']:.0f} turns/s",
        f"CPU bound {d['cpu_bound_rate']:.0f}/s",
        f"{d['ratio']:.2f}",
        ">= 200 in flight; >= 0.80",
        d["max_in_flight"] >= 200 and d["ratio"] >= 0.8,
    )


def _b4(d: dict[str, Any]) -> Row:
    return (
        f"gap p50 {d['gap_p50_ms']:.2f} ms (cycle {d['cycle_p50_ms']:.1f} ms); "
        f"FIFO {'yes' if d['fifo'] else 'NO'}",
        "-",
        "-",
        "FIFO; gap <= 5 ms",
        bool(d["met"]),
    )


def _b5(d: dict[str, Any]) -> Row:
    return (
        f"commit {d['turnq_write_ms_10']:.2f} -> {d['turnq_write_ms_2000']:.2f} ms",
        f"naive {d['naive_write_ms_10']:.2f} -> {d['naive_write_ms_2000']:.2f} ms "
        f"({d['naive_ratio']:.2f}x)",
        f"{d['turnq_ratio']:.2f}",
        "<= 1.2",
        d["turnq_ratio"] <= 1.2,
    )


def _b6(d: dict[str, Any]) -> Row:
    return (
        f"p99 {d['busy_p99_ms']:.1f} ms with {d['backlog']:.0f} pending",
        f"p99 {d['idle_p99_ms']:.1f} ms idle",
        f"{d['ratio']:.2f}",
        "<= 1.10",
        d["ratio"] <= 1.1,
    )


def _b7(d: dict[str, Any]) -> Row:
    return (
        f"{d['rate_1']:.0f} / {d['rate_2']:.0f} / {d['rate_4']:.0f} turns/s; best at "
        f"{d['best_processes']:.0f} using {d['cores_at_best']:.2f} of {d['cpus']:.0f} cores",
        "1 process",
        f"{d['speedup_2']:.2f}x / {d['speedup_4']:.2f}x",
        "curve; where is the bound",
        None,  # no pass/fail: the figure says where the bound is
    )


def _b8(d: dict[str, Any]) -> Row:
    return (
        f"CPU {d['cpu_on_ms']:.2f} ms/turn; p50 {d['p50_on_ms']:.1f} ms "
        f"({d['p50_diff_ms']:+.2f}); {d['round_trips_per_turn']:.2f} journal round trips/turn",
        f"journal off: CPU {d['cpu_off_ms']:.2f} ms/turn; p50 {d['p50_off_ms']:.1f} ms",
        f"{d['cpu_ratio']:.3f}",
        "<= 1.10x CPU; p50 <= +2 ms",
        d["cpu_ratio"] <= 1.1 and d["p50_diff_ms"] <= 2,
    )


def _b9(d: dict[str, Any]) -> Row:
    return (
        f"{d['redis_commands_per_turn']:.0f} Redis cmds/turn; CPU {d['cpu_ratio']:.1f}x; "
        f"text held p99 {d['hold_p99_ms']:.0f} ms",
        f"instant turn; per-delta {d['per_delta_commands_per_turn']:.0f} cmds/turn",
        f"{d['cpu_ratio']:.2f}",
        "<= 40 cmds; <= 1.5x CPU; <= 100 ms",
        d["redis_commands_per_turn"] <= 40 and d["cpu_ratio"] <= 1.5 and d["hold_p99_ms"] <= 100,
    )


def _b10(d: dict[str, Any]) -> Row:
    return (
        f"{d['max_in_flight']:.0f} in flight ({d['max_model_calls_in_flight']:.0f} model calls); "
        f"{d['rss_mb_per_100_in_flight']:.1f} MB per 100; {d['max_threads']:.0f} threads",
        f"{d['turns']:.0f} turns of {d['model_seconds']:.0f} s",
        "-",
        ">= 1,000 in flight",
        d["max_in_flight"] >= 1000,
    )


ROWS: dict[str, Callable[[dict[str, Any]], Row]] = {
    "B1": _b1, "B2": _b2, "B3": _b3, "B4": _b4, "B5": _b5, "B6": _b6, "B7": _b7,
    "B8": _b8, "B9": _b9, "B10": _b10,
}  # fmt: skip


def run_one(bid: str, quick: bool, repeat: int) -> dict[str, Any]:
    """Run one benchmark ``repeat`` times: {"result": medians, "runs": [...]} or an error."""
    module = importlib.import_module(MODULES[bid])
    fn = getattr(module, "run", None)
    if fn is None:
        return {"error": f"{bid} not available ({MODULES[bid]} has no run())"}
    runs = []
    t0 = time.monotonic()
    for _ in range(repeat):
        try:
            runs.append(fn(quick=quick))
        except Exception as e:  # one broken benchmark must not hide the others
            traceback.print_exc()
            return {"error": f"{type(e).__name__}: {e}"[:300], "runs": runs}
    return {"result": aggregate(runs), "runs": runs, "seconds": time.monotonic() - t0}


def table_row(bid: str, outcome: dict[str, Any]) -> list[str]:
    if "error" in outcome:
        return [bid, WHAT[bid], outcome["error"], "-", "-", "-", "not run", "-", "-"]
    d = outcome["result"]
    figure, baseline, ratio, target, met = ROWS[bid](d)
    verdict = "n/a" if met is None else ("yes" if met else "NO")
    cpu, peak = d.get("cpu_ms_per_turn"), d.get("peak_mb_per_worker")
    return [
        bid, WHAT[bid], figure, baseline, ratio, target, verdict,
        f"{cpu:.2f}" if isinstance(cpu, int | float) else "-",
        f"{peak:.0f}" if isinstance(peak, int | float) else "-",
    ]  # fmt: skip


def _cmd(args: Sequence[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import psycopg
    import redis

    from benchmarks.common import PG_ADMIN, REDIS

    lscpu = {
        k.strip(): v.strip()
        for k, _, v in (ln.partition(":") for ln in _cmd(["lscpu"]).splitlines())
    }
    with psycopg.connect(PG_ADMIN) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    r = redis.Redis.from_url(REDIS)
    try:
        redis_version = str(r.info("server")["redis_version"])
    finally:
        r.close()
    mem_kb = next(
        int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
        if ln.startswith("MemTotal:")
    )  # fmt: skip
    return {
        "cpu": lscpu.get("Model name", platform.processor()),
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": row[0] if row else "?",
        "redis": redis_version,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="turnq bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, one repeat")
    ap.add_argument("--repeat", type=int, help="repeats per benchmark (default 3, quick 1)")
    ap.add_argument("--only", help="comma-separated ids, e.g. B2,B4 (default: all)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where summary.json and PNGs go")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    ids = [b.strip().upper() for b in args.only.split(",")] if args.only else list(MODULES)
    unknown = [b for b in ids if b not in MODULES]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}")
    os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
    started = time.monotonic()
    outcomes: dict[str, dict[str, Any]] = {}
    for bid in ids:
        print(f"--- {bid}: {WHAT[bid]}", flush=True)
        outcomes[bid] = run_one(bid, args.quick, repeat)
        if "seconds" in outcomes[bid]:
            print(f"    {bid} took {outcomes[bid]['seconds']:.0f} s", flush=True)
    rows = [table_row(bid, outcomes[bid]) for bid in ids]
    mode = "quick" if args.quick else "full"
    title = f"turnq benchmarks ({mode}, median of {repeat}) in {time.monotonic() - started:.0f} s"
    print(table(title, HEADER, rows))
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "repeat": repeat,
        "seconds": time.monotonic() - started,
        "machine": machine(),
        "header": HEADER,
        "rows": rows,
        "results": {bid: o.get("result") for bid, o in outcomes.items()},
        "errors": {bid: o["error"] for bid, o in outcomes.items() if "error" in o},
        "seconds_each": {bid: o.get("seconds") for bid, o in outcomes.items()},
        "runs": {bid: o.get("runs", []) for bid, o in outcomes.items()},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if not args.no_plots:
        from benchmarks.plots import plot_all

        for path in plot_all(summary["results"], args.out):
            print("wrote", path)
    print("wrote", args.out / "summary.json")
    missing = [b for b in ids if "error" in outcomes[b] and not outcomes[b]["error"].endswith(
        "has no run())"
    )]  # fmt: skip
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
