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

import pytest

from tests.conftest import PG_ADMIN_URL, REDIS_URL

pytestmark = pytest.mark.system


def test_turnq_bench_quick_runs_b4_and_writes_the_summary_and_a_plot(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    # stack_env: the services are checked (skip locally, fail under CI) as for every system test
    env = {"BENCH_PG_ADMIN": PG_ADMIN_URL, "BENCH_REDIS": REDIS_URL}
    cmd = [sys.executable, "-m", "producer.cli", "bench", "--quick", "--only", "B4"]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path)],
        env={**os.environ, **stack_env, **env},
        capture_output=True,
        text=True,
        timeout=150,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
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
