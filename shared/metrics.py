"""Prometheus metrics.  Names and labels are documented here; no label is ever a
session, turn or user id (unbounded cardinality, and I10).

    from shared import metrics
    metrics.COMPACTIONS.labels(strategy="summarize", status="failed").inc()

A worker serves them on ``TURNQ_METRICS_PORT`` (``workers.app``).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TURNS = Counter("turnq_turns_total", "Turns finished by a worker, by final status.", ["status"])
COMPACTIONS = Counter(
    "turnq_compactions_total",
    "Compaction attempts by strategy and outcome (succeeded, failed, conflict, noop).",
    ["strategy", "status"],
)
TRIMS = Counter(
    "turnq_emergency_trims_total",
    "Turns whose context was trimmed in memory because compaction had not caught up.",
)
CONTEXT_TOKENS = Histogram(
    "turnq_context_tokens",
    "Session context size after a turn (tokens).",
    buckets=(500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000),
)
