"""Prometheus metrics.  Names and labels are documented here and in
``docs/observability.md``; no label is ever a session, turn or user id (unbounded
cardinality, and I10).

    from shared import metrics
    metrics.COMPACTIONS.labels(strategy="summarize", status="failed").inc()
    metrics.register_cluster_collector(settings.redis_url)   # any process's /metrics

A worker serves them on ``TURNQ_METRICS_PORT`` (``workers.app``).  Two kinds:

* **Process metrics** (counters, histograms) are observed by the process that did
  the work; Prometheus sums them over instances.
* **Cluster gauges** (queue depths, turns by status, ...) describe the whole
  deployment.  The beat job ``turnq.cluster_metrics`` computes them once per
  interval and stores a snapshot in Redis (``keys.cluster_metrics_key``); the
  ``ClusterCollector`` reads it at scrape time.  Every process exposes the same
  values, so dashboards aggregate them with ``max`` (not ``sum``) over instances.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared import keys
from shared.logging import set_log_context
from shared.status import TurnStatus

if TYPE_CHECKING:
    from shared.store import TurnRecord

log = logging.getLogger("turnq.turns")

TURNS = Counter("turnq_turns_total", "Turns finished by a worker, by final status.", ["status"])
AGENT_FALLBACKS = Counter(
    "turnq_agent_fallbacks_total",
    "Turns that started at the session's entry agent because its active agent is no longer "
    "in the deployment.",
)
APPROVALS_REQUESTED = Counter(
    "turnq_approvals_requested_total", "Tool calls a paused turn asked a person to decide."
)
APPROVALS_DECIDED = Counter(
    "turnq_approvals_decided_total",
    "Approval decisions recorded, by decision (approved, rejected, expired).",
    ["decision"],
)
APPROVAL_DECISION_SECONDS = Histogram(
    "turnq_approval_decision_seconds",
    "From a tool call asking for approval to its decision.",
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600),
)
JOURNAL_STEPS_EXPIRED = Counter(
    "turnq_journal_steps_expired_total",
    "Step journal rows of finished turns removed after TURNQ_JOURNAL_RETENTION_S.",
)
TURN_FAILURES = Counter(
    "turnq_turn_failures_total",
    "Failed turns by error code (shared.status.ErrorCode).",
    ["code"],
)
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

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TURN_QUEUE_WAIT = Histogram(
    "turnq_turn_queue_wait_seconds",
    "Accepted -> first started (turns.started_at - queued_at), observed on a turn's "
    "first attempt: the wait behind the session's earlier turns plus the queue.",
    buckets=_SECONDS,
)
TURN_RUN = Histogram(
    "turnq_turn_run_seconds",
    "Claimed -> finished by this worker (context load, agent run, fenced commit), any outcome.",
    buckets=_SECONDS,
)
MODEL_SECONDS = Histogram(
    "turnq_model_seconds",
    "Time a turn spent in the agent run: model calls, tool calls and in-place retries "
    "of transient model errors, any outcome.",
    buckets=_SECONDS,
)
STREAM_TEXT_HOLD = Histogram(
    "turnq_stream_text_hold_seconds",
    "How long a turn's oldest streamed text waited in the worker to be coalesced into one "
    "event-stream entry (TURNQ_STREAM_FLUSH_MS), per entry: the most it delayed a viewer.",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1, 0.15, 0.25, 0.5, 1),
)
TURN_TOKENS = Histogram(
    "turnq_turn_tokens",
    "Tokens of a succeeded turn as the model reported them, summed over its model calls "
    "(kind = input | output).",
    ["kind"],
    buckets=(16, 64, 256, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000),
)
LOCK_CONTENTION = Counter(
    "turnq_lock_contention_total",
    "Kicks that found their session's lock held and exited (the holder drains the turn).",
)
REAPER_RECOVERIES = Counter(
    "turnq_reaper_recoveries_total",
    "Sessions the reaper re-kicked: pending turns whose kick was stale and whose lock was gone.",
)
SESSIONS_EXPIRED = Counter(
    "turnq_sessions_expired_total",
    "Sessions deleted by the retention job (idle past TURNQ_SESSION_RETENTION_S).",
)
BEAT_JOBS = Counter(
    "turnq_beat_jobs_total",
    "Beat job runs by job (reap, retention, cluster_metrics) and outcome "
    "(ran, skipped: another runner had the job's lock, failed).",
    ["job", "outcome"],
)


# ---------------------------------------------------------------------- turn events
def turn_started(turn: TurnRecord) -> float:
    """A worker claimed the turn: observe its queue wait, tag this task's logs with it.

    Returns ``time.perf_counter()`` for the caller's ``TURN_RUN`` observation.
    """
    started = time.perf_counter()
    wait = None
    if turn.attempts <= 1 and turn.started_at is not None:
        wait = max(0.0, (turn.started_at - turn.queued_at).total_seconds())
        TURN_QUEUE_WAIT.observe(wait)
    set_log_context(turn_id=turn.id, _turn_t0=started)
    log.debug(
        "turn started",
        extra={
            "turn_id": turn.id,
            "session_id": turn.session_id,
            "seq": turn.seq,
            "attempt": turn.attempts,
            "queue_wait_s": None if wait is None else round(wait, 4),
        },
    )
    return started


def turn_finished(turn: TurnRecord, status: str, input_tokens: int, output_tokens: int) -> None:
    """The turn's result is committed: observe its tokens, log one line (ids, no content)."""
    TURN_TOKENS.labels(kind="input").observe(input_tokens)
    TURN_TOKENS.labels(kind="output").observe(output_tokens)
    from shared.logging import log_context

    t0 = log_context().get("_turn_t0")
    log.info(
        "turn finished",
        extra={
            "turn_id": turn.id,
            "session_id": turn.session_id,
            "seq": turn.seq,
            "attempt": turn.attempts,
            "status": status,
            "run_s": round(time.perf_counter() - t0, 4) if isinstance(t0, float) else None,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        },
    )


# ---------------------------------------------------------------------- cluster gauges
QUEUES = (keys.TURNS_QUEUE, keys.SUMMARIZE_QUEUE, keys.MAINTENANCE_QUEUE)


@dataclass(frozen=True)
class ClusterSnapshot:
    """What the metrics job measured, as stored in the Redis hash (all values numbers)."""

    taken_at: float
    queue_depth: Mapping[str, int] = field(default_factory=dict)
    turns_by_status: Mapping[str, int] = field(default_factory=dict)
    oldest_queued_turn_age_s: float = 0.0
    sessions_over_budget: int = 0

    def to_hash(self) -> dict[str, str]:
        out = {
            "taken_at": repr(self.taken_at),
            "oldest_queued_turn_age_seconds": repr(self.oldest_queued_turn_age_s),
            "sessions_over_budget": str(self.sessions_over_budget),
        }
        out.update({f"queue_depth:{q}": str(n) for q, n in self.queue_depth.items()})
        out.update({f"turns_by_status:{s}": str(n) for s, n in self.turns_by_status.items()})
        return out

    @classmethod
    def from_hash(cls, raw: Mapping[bytes | str, bytes | str]) -> ClusterSnapshot | None:
        data = {_s(k): _s(v) for k, v in raw.items()}
        if "taken_at" not in data:
            return None
        try:
            return cls(
                taken_at=float(data["taken_at"]),
                queue_depth={
                    k.split(":", 1)[1]: int(v)
                    for k, v in data.items()
                    if k.startswith("queue_depth:")
                },
                turns_by_status={
                    k.split(":", 1)[1]: int(v)
                    for k, v in data.items()
                    if k.startswith("turns_by_status:")
                },
                oldest_queued_turn_age_s=float(data.get("oldest_queued_turn_age_seconds", 0)),
                sessions_over_budget=int(data.get("sessions_over_budget", 0)),
            )
        except ValueError:
            return None


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class ClusterCollector(Collector):
    """Exposes the latest cluster snapshot (one HGETALL per scrape, 1 s timeout).

    No snapshot (no beat, or it stopped longer than the snapshot's TTL ago) or no
    Redis: the cluster gauges are absent, which ``absent()`` alerts can see.
    """

    def __init__(self, client: redis.Redis, namespace: str | None = None) -> None:
        self.client = client
        self.key = keys.cluster_metrics_key(namespace)

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        try:
            raw = self.client.hgetall(self.key)
        except redis.RedisError:
            return []
        snap = ClusterSnapshot.from_hash(raw)
        return [] if snap is None else self._families(snap)

    @staticmethod
    def _families(snap: ClusterSnapshot | None) -> list[Metric]:
        depth = GaugeMetricFamily(
            "turnq_queue_depth",
            "Messages waiting in a broker queue (turns, summarize, maintenance; "
            "priority sub-lists summed), from the latest cluster snapshot.",
            labels=["queue"],
        )
        by_status = GaugeMetricFamily(
            "turnq_turns_by_status",
            "Turns in Postgres by status, from the latest cluster snapshot.",
            labels=["status"],
        )
        oldest = GaugeMetricFamily(
            "turnq_oldest_queued_turn_age_seconds",
            "Age of the oldest turn still queued (0: none), from the latest cluster snapshot.",
        )
        over = GaugeMetricFamily(
            "turnq_sessions_over_budget",
            "Sessions whose context is above the compaction trigger, from the latest "
            "cluster snapshot.",
        )
        age = GaugeMetricFamily(
            "turnq_cluster_snapshot_age_seconds",
            "Seconds since the cluster snapshot was taken (the metrics job's freshness).",
        )
        families: list[Metric] = [depth, by_status, oldest, over, age]
        if snap is None:  # describe(): names only
            return families
        for q in QUEUES:
            depth.add_metric([q], snap.queue_depth.get(q, 0))
        for s in TurnStatus:
            by_status.add_metric([s.value], snap.turns_by_status.get(s.value, 0))
        oldest.add_metric([], snap.oldest_queued_turn_age_s)
        over.add_metric([], snap.sessions_over_budget)
        age.add_metric([], max(0.0, time.time() - snap.taken_at))
        return families


_registered: weakref.WeakKeyDictionary[CollectorRegistry, ClusterCollector] = (
    weakref.WeakKeyDictionary()
)


def register_cluster_collector(
    redis_url_or_client: str | redis.Redis,
    *,
    registry: CollectorRegistry = REGISTRY,
    namespace: str | None = None,
) -> ClusterCollector:
    """Expose the cluster gauges from this process's registry (idempotent per registry).

    Pass a URL or a *sync* ``redis.Redis``; the collector runs in the scrape's thread.
    """
    existing = _registered.get(registry)
    if existing is not None:
        return existing
    client = (
        redis.Redis.from_url(redis_url_or_client, socket_timeout=1, socket_connect_timeout=1)
        if isinstance(redis_url_or_client, str)
        else redis_url_or_client
    )
    collector = ClusterCollector(client, namespace)
    registry.register(collector)
    _registered[registry] = collector
    return collector
