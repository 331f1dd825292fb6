"""PNG plots of a benchmark run (the ``results`` of ``summary.json``).

    python -m benchmarks.plots [benchmarks/results/summary.json]

Each plot is drawn only if its benchmarks ran: throughput.png (B2, B3, B7 rates and
their baselines), scaling.png (B7: turns/s and cores in use per role against worker
processes), write_cost.png (B5: turnq vs naive at 10 and 2,000 items), latency.png
(B1 and B6 p50/p99), burst.png (B4: each turn's cycle through the burst).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen

Results = dict[str, Any]


def _bars(ax: Any, labels: list[str], values: list[float], colors: list[str]) -> None:
    bars = ax.bar(labels, values, color=colors)
    ax.bar_label(bars, fmt="%.1f", fontsize=8)


def throughput(r: Results, out: Path) -> Path | None:
    labels, values, colors = [], [], []
    if r.get("B2"):
        labels += ["B2 raw Celery\nno-op", "B2 turnq\ninstant model", "B2 turnq\nwith task events"]
        values += [r["B2"]["raw_rate"], r["B2"]["turnq_rate"], r["B2"]["events_rate"]]
        colors += ["#999999", "#1f77b4", "#6baed6"]
    if r.get("B3"):
        labels += ["B3 instant\n(CPU bound, 1 proc)", "B3 stub 1 s\nover HTTP, 1 proc"]
        values += [r["B3"]["cpu_bound_rate"], r["B3"]["io_rate"]]
        colors += ["#aec7e8", "#ff7f0e"]
    if not labels:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    _bars(ax, labels, values, colors)
    ax.set_ylabel("tasks or turns drained per second")
    ax.set_yscale("log")
    ax.set_title("Drain rate (log scale)")
    return _save(fig, out / "throughput.png")


def scaling(r: Results, out: Path) -> Path | None:
    d = r.get("B7")
    if not d:
        return None
    procs = sorted(d["points"], key=int)
    x = [int(p) for p in procs]
    pts = [d["points"][p] for p in procs]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    a1.plot(x, [p["rate"] for p in pts], "o-", color="#1f77b4")
    a1.set_xticks(x)
    a1.set_xlabel("worker processes")
    a1.set_ylabel("turns/s")
    a1.set_ylim(bottom=0)
    a1.set_title("B7 throughput")
    bottom = [0.0] * len(x)
    for role, color in (("worker", "#1f77b4"), ("postgres", "#2ca02c"), ("redis", "#d62728")):
        vals = [p["cores"].get(role, 0.0) for p in pts]
        a2.bar([str(v) for v in x], vals, bottom=bottom, label=role, color=color)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    busy = [p.get("machine_cores", {}).get("busy") for p in pts]
    if all(b is not None for b in busy):  # other tenants and the kernel: the rest of the bar
        a2.plot([str(v) for v in x], busy, "kD", label="whole machine busy")
    a2.axhline(d["cpus"], color="black", linestyle="--", linewidth=1, label="cores on machine")
    a2.set_xlabel("worker processes")
    a2.set_ylabel("cores in use during the drain")
    a2.set_title("B7 CPU use by role")
    a2.legend(fontsize=8)
    return _save(fig, out / "scaling.png")


def write_cost(r: Results, out: Path) -> Path | None:
    d = r.get("B5")
    if not d:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    groups = [("turnq", "write"), ("turnq", "load"), ("naive", "write"), ("naive", "load")]
    width = 0.38
    xs = list(range(len(groups)))
    for k, (n, color) in enumerate(((10, "#aec7e8"), (2000, "#1f77b4"))):
        vals = [d[f"{design}_{what}_ms_{n}"] for design, what in groups]
        bars = ax.bar([x + (k - 0.5) * width for x in xs], vals, width, label=f"{n} items",
                      color=color)  # fmt: skip
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(xs, [f"{design} {what}" for design, what in groups])
    ax.set_ylabel("ms per turn (median)")
    ax.set_title(
        f"B5 write cost: turnq x{d['turnq_ratio']:.2f}, naive x{d['naive_ratio']:.2f} "
        "(2,000 vs 10 items)"
    )
    ax.legend()
    return _save(fig, out / "write_cost.png")


def latency(r: Results, out: Path) -> Path | None:
    labels, p50, p99 = [], [], []
    if r.get("B1"):
        b1 = r["B1"]
        for name, key in (("raw Celery", "raw"), ("turnq", "turnq"), ("SDK session", "sdk")):
            if f"{key}_p50_ms" in b1:
                labels.append(f"B1 {name}")
                p50.append(b1[f"{key}_p50_ms"])
                p99.append(b1[f"{key}_p99_ms"])
    if r.get("B6"):
        labels += ["B6 no backlog", "B6 backlog"]
        p50 += [r["B6"]["idle_p50_ms"], r["B6"]["busy_p50_ms"]]
        p99 += [r["B6"]["idle_p99_ms"], r["B6"]["busy_p99_ms"]]
    if not labels:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = list(range(len(labels)))
    for k, (vals, name, color) in enumerate(((p50, "p50", "#aec7e8"), (p99, "p99", "#1f77b4"))):
        bars = ax.bar([x + (k - 0.5) * 0.38 for x in xs], vals, 0.38, label=name, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel("ms, enqueue -> result")
    ax.set_title("Turn latency")
    ax.legend()
    return _save(fig, out / "latency.png")


def burst(r: Results, out: Path) -> Path | None:
    d = r.get("B4")
    if not d or not d.get("cycles_ms"):
        return None
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.plot(range(2, len(d["cycles_ms"]) + 2), d["cycles_ms"], ".-", linewidth=0.8)
    ax.axhline(d["cycle_p50_ms"], color="black", linestyle="--", linewidth=1, label="median")
    ax.set_xlabel("turn of the burst (seq)")
    ax.set_ylabel("ms since the previous turn finished")
    ax.set_ylim(bottom=0)
    ax.set_title(f"B4 burst on one session: FIFO {'held' if d['fifo'] else 'BROKEN'}")
    ax.legend()
    return _save(fig, out / "burst.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(results: Results, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = [f(results, out) for f in (throughput, scaling, write_cost, latency, burst)]
    return [p for p in made if p is not None]


if __name__ == "__main__":
    src = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).parent / "results" / "summary.json"
    )
    for p in plot_all(json.loads(src.read_text())["results"], src.parent):
        print("wrote", p)
