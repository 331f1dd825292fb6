"""`turnq bench` end to end: the runner, a benchmark, the table, summary.json, a plot.

Behaviour only (figures present, finite, consistent; FIFO held): never speed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PG_ADMIN_URL, REDIS_URL

pytestmark = pytest.mark.system


def quick_bench(
    only: str, stack_env: dict[str, str], out: Path, timeout: float, *options: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`turnq bench --quick --only ...` as a subprocess; its output and summary.json.

    stack_env: the services are checked (skip locally, fail under CI) as for every system test.
    """
    env = {"BENCH_PG_ADMIN": PG_ADMIN_URL, "BENCH_REDIS": REDIS_URL}
    cmd = [sys.executable, "-m", "producer.cli", "bench", "--quick", "--only", only]
    done = subprocess.run(
        [*cmd, "--out", str(out), *options],
        env={**os.environ, **stack_env, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return done, summary


def test_turnq_bench_quick_runs_b4_and_writes_the_summary_and_a_plot(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    done, summary = quick_bench("B4", stack_env, tmp_path, 150)
    assert summary["mode"] == "quick" and summary["repeat"] == 1 and not summary["errors"]
    assert [r[0] for r in summary["rows"]] == ["B4"]
    for row in summary["rows"]:
        assert row[6] in ("yes", "NO")  # met? is decided, not "not run"
        assert float(row[7]) > 0 and float(row[8]) > 10  # CPU ms/turn, peak MB/worker
        assert row[0] in done.stdout  # the table was printed
    b4 = summary["results"]["B4"]
    assert b4["fifo"] is True and b4["succeeded"] == b4["turns"] * b4["rounds"]
    assert b4["gap_p50_ms"] >= 0 and b4["cycle_p50_ms"] > 0
    assert len(b4["cycles_ms"]) == b4["turns"] - 1
    assert all(math.isfinite(c) and c > 0 for c in b4["cycles_ms"])
    png = tmp_path / "burst.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["machine"]["nproc"] >= 1 and summary["machine"]["postgres"]


def test_b9_and_b10_quick_measure_the_production_shape_and_the_turns_in_flight(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    _, summary = quick_bench("B9,B10", stack_env, tmp_path, 300, "--no-plots")
    assert not summary["errors"] and [r[0] for r in summary["rows"]] == ["B9", "B10"]
    b9, b10 = summary["results"]["B9"], summary["results"]["B10"]
    assert b9["failed"] == 0 and b10["failed"] == 0
    arms = b9["arms"]
    # coalescing: far fewer stream entries than tokens, and fewer commands than per delta
    # (whose entries a worker's turns share too: one XADD carries every waiting chunk)
    real_entries = arms["realistic"]["stream_entries_per_turn"]
    assert real_entries < 150 and arms["per_delta"]["stream_entries_per_turn"] > 3 * real_entries
    assert b9["redis_commands_per_turn"] < b9["per_delta_commands_per_turn"]
    assert arms["realistic"]["tokens_timed"] > 0 and math.isfinite(b9["latency_added_p99_ms"])
    assert 0 < b9["hold_p99_ms"] and math.isnan(arms["per_delta"]["hold_p99_ms"])
    assert b9["cpu_ratio"] > 0
    # in flight: the turns ran at once in one process without a thread each
    assert b10["max_in_flight"] > 100 and b10["max_threads"] < 50
    assert b10["rss_mb_per_100_in_flight"] > 0


def test_b8_quick_measures_the_journal_on_against_off(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    _, summary = quick_bench("B8", stack_env, tmp_path, 200, "--no-plots")
    assert not summary["errors"] and [r[0] for r in summary["rows"]] == ["B8"]
    b8 = summary["results"]["B8"]
    assert b8["failed"] == 0 and b8["turns_per_arm"] == b8["rounds"] * b8["block"]
    # the turn has the shape the row claims: 2 model calls around 1 tool call
    assert b8["model_calls_per_turn"] == 2 and b8["tool_calls_per_turn"] == 1
    # TURNQ_JOURNAL=false writes nothing; on, each model response and the tool's output is
    # one row, written by one turnq_journal call (one round trip) each
    assert b8["off_journal_rows"] == 0 and b8["journal_rows_per_turn"] == 3
    assert b8["round_trips_per_turn"] == 3
    assert b8["cpu_on_ms"] > 0 and b8["cpu_off_ms"] > 0 and math.isfinite(b8["p50_diff_ms"])
