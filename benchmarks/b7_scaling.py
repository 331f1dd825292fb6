"""B7: scaling 1 -> 2 -> 4 worker processes on one machine, instant model.

The same drain as B2 (one-turn sessions, workers paused while the turns are enqueued,
rate = turns / (last finished_at - resume)) with 4, then 2, then 1 worker processes
(threads pool, concurrency 16 each): four are started, then two and one more are
stopped between steps, so no kick is ever held by an idle worker.  Beside each
rate, the cores in use during the drain (CPU seconds / wall seconds) of the workers
(each and in total), Redis and Postgres: on a 2-core machine the sum tells where the
bound is.

    python -m benchmarks.b7_scaling [--sessions 1000]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from benchmarks.b2_throughput import CONCURRENCY, ECHO, drain_turnq
from benchmarks.common import running, scratch_stack, table, turnq_worker

STEPS = (4, 2, 1)


def run(quick: bool = False, sessions: int | None = None) -> dict[str, Any]:
    sessions = sessions or (200 if quick else 1000)
    points: dict[int, dict[str, Any]] = {}
    with scratch_stack() as env:
        procs = [turnq_worker(env, f"b7w{i}", CONCURRENCY, **ECHO) for i in range(max(STEPS))]
        with running(procs):
            drain_turnq(env, procs, [f"warm-{i}" for i in range(40)])
            for p in STEPS:
                for w in procs[p:]:
                    w.stop()
                d = drain_turnq(env, procs[:p], [f"b7-{p}-{i}" for i in range(sessions)])
                cores = d["usage"]["cores"]
                wall = d["usage"]["wall_s"]
                points[p] = {
                    "rate": d["rate"],
                    "cpu_ms_per_turn": d["cpu_ms_per_turn"],
                    "peak_mb_per_worker": d["peak_mb_per_worker"],
                    "cores": cores,
                    "cores_total": sum(cores.values()),
                    "cores_per_worker": [c / wall for c in d["usage"]["per_worker_cpu_s"]],
                    "machine_cores": d["usage"]["machine_cores"],
                }
    ncpu = os.cpu_count() or 1
    top = max(points, key=lambda p: points[p]["rate"])
    return {
        "sessions": sessions,
        "cpus": ncpu,
        "points": {str(p): v for p, v in sorted(points.items())},
        "rate_1": points[1]["rate"],
        "rate_2": points[2]["rate"],
        "rate_4": points[4]["rate"],
        "speedup_2": points[2]["rate"] / points[1]["rate"],
        "speedup_4": points[4]["rate"] / points[1]["rate"],
        "best_processes": top,
        "cores_at_best": points[top]["cores_total"],
        "cpu_ms_per_turn": points[2]["cpu_ms_per_turn"],
        "peak_mb_per_worker": max(v["peak_mb_per_worker"] for v in points.values()),
    }


def rows(d: dict[str, Any]) -> list[list[str]]:
    out = []
    for p, v in d["points"].items():
        c = v["cores"]
        out.append([
            p, f"{v['rate']:.1f}", f"{v['cpu_ms_per_turn']:.2f}",
            f"{c['worker']:.2f}", " ".join(f"{x:.2f}" for x in v["cores_per_worker"]),
            f"{c['redis']:.2f}", f"{c['postgres']:.2f}", f"{v['cores_total']:.2f} / {d['cpus']}",
            f"{v['machine_cores']['busy']:.2f}", f"{v['machine_cores']['iowait']:.2f}",
        ])  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1000)
    d = run(False, ap.parse_args().sessions)
    header = [
        "processes", "turns/s", "CPU ms/turn", "workers", "each", "redis", "pg", "total",
        "machine busy", "iowait",
    ]  # fmt: skip
    print(table(f"B7 scaling, {d['sessions']} sessions (cores in use)", header, rows(d)))


if __name__ == "__main__":
    main()
