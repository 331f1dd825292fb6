"""Beat jobs besides the reaper, and the heartbeats behind ``turnq health``.

    await expire_sessions(redis, engine, settings)                 # turnq.retention
    await publish_cluster_metrics(redis, engine, settings, trigger, broker=broker)  # metrics

Each job runs at most once per interval however many beats send it (a second beat,
a duplicate or redelivered message): the first runner takes ``keys.beat_job_key(job)``
with ``SET NX PX`` for 0.9 x the interval and nobody deletes it.  The work itself is
also safe to overlap (retention locks rows with ``SKIP LOCKED``; the snapshot is a
whole-hash replace), so even an expired lock costs nothing but a duplicate read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from celery.beat import PersistentScheduler
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import keys, metrics
from shared.health import HeartbeatFile
from shared.metrics import ClusterSnapshot
from shared.retention import RetentionReport, cluster_stats, expire_idle_sessions
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)


async def claim_run(redis: aioredis.Redis, job: str, interval_s: float) -> bool:
    """True for the one runner of this interval."""
    ttl_ms = max(100, int(interval_s * 900))
    return bool(await redis.set(keys.beat_job_key(job), str(time.time()), nx=True, px=ttl_ms))


async def expire_sessions(
    redis: aioredis.Redis, engine: AsyncEngine, settings: Settings, *, force: bool = False
) -> RetentionReport | None:
    """Delete sessions idle past ``session_retention_s``; None if disabled or not our turn."""
    if settings.session_retention_s <= 0:
        return None
    if not force:
        try:
            mine = await claim_run(redis, "retention", settings.retention_interval_s)
        except RedisError:
            log.warning("retention: Redis unreachable; skipping this run")
            metrics.BEAT_JOBS.labels(job="retention", outcome="failed").inc()
            return None
        if not mine:
            metrics.BEAT_JOBS.labels(job="retention", outcome="skipped").inc()
            return None
    try:
        report = await expire_idle_sessions(
            engine,
            older_than_s=settings.session_retention_s,
            batch=settings.retention_batch_size,
            batches=settings.retention_max_batches,
            namespace=settings.namespace,
        )
    except Exception:
        metrics.BEAT_JOBS.labels(job="retention", outcome="failed").inc()
        raise
    metrics.SESSIONS_EXPIRED.inc(report.deleted)
    metrics.BEAT_JOBS.labels(job="retention", outcome="ran").inc()
    log.info(
        "retention: sessions expired",
        extra={
            "deleted": report.deleted,
            "batches": report.batches,
            "complete": report.complete,
            "retention_s": settings.session_retention_s,
        },
    )
    return report


async def queue_depths(redis: aioredis.Redis) -> dict[str, int]:
    """LLEN of every broker queue, priority sub-lists included, in one round trip."""
    names = metrics.QUEUES
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            for key in keys.queue_keys(name):
                pipe.llen(key)
        lengths = await pipe.execute()
    per = len(keys.queue_keys(names[0]))
    return {name: int(sum(lengths[i * per : (i + 1) * per])) for i, name in enumerate(names)}


async def publish_cluster_metrics(
    redis: aioredis.Redis,
    engine: AsyncEngine,
    settings: Settings,
    trigger_tokens: int,
    *,
    broker: aioredis.Redis | None = None,
    force: bool = False,
) -> ClusterSnapshot | None:
    """Measure queues (on ``broker``, default ``redis``) and turns, store the snapshot in the
    state ``redis``; None if not our turn."""
    interval = settings.cluster_metrics_interval_s
    if not force:
        try:
            mine = await claim_run(redis, "cluster_metrics", interval)
        except RedisError:
            metrics.BEAT_JOBS.labels(job="cluster_metrics", outcome="failed").inc()
            return None
        if not mine:
            metrics.BEAT_JOBS.labels(job="cluster_metrics", outcome="skipped").inc()
            return None
    try:
        stats, depths = await asyncio.gather(
            cluster_stats(engine, trigger_tokens=trigger_tokens, namespace=settings.namespace),
            queue_depths(broker or redis),
        )
        snap = ClusterSnapshot(
            taken_at=time.time(),
            queue_depth=depths,
            turns_by_status=stats.turns_by_status,
            oldest_queued_turn_age_s=stats.oldest_queued_turn_age_s,
            sessions_over_budget=stats.sessions_over_budget,
        )
        key = keys.cluster_metrics_key()
        fields: dict[Any, Any] = snap.to_hash()
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.expire(key, keys.cluster_metrics_ttl_s(interval))
            await pipe.execute()
    except Exception:
        metrics.BEAT_JOBS.labels(job="cluster_metrics", outcome="failed").inc()
        raise
    metrics.BEAT_JOBS.labels(job="cluster_metrics", outcome="ran").inc()
    return snap


# ---------------------------------------------------------------------- heartbeats
class WorkerHeartbeat:
    """A worker's liveness: written from the asyncio loop while the consumer ticks too.

    ``consumer_tick`` runs on Celery's consumer event loop (a kombu timer); the loop
    task writes the file only if that tick is recent, so either loop stalling (or the
    process being stopped) lets the file go stale.
    """

    def __init__(self, settings: Settings, role: str) -> None:
        self.settings = settings
        self.file = HeartbeatFile(settings, role)
        self.consumer_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def consumer_tick(self) -> None:
        self.consumer_at = time.monotonic()

    def start(self, loop_runner: Any, timer: Any) -> None:
        """``loop_runner``: the runtime (``.run(coro)``); ``timer``: the consumer's timer."""
        interval = self.settings.liveness_interval_s
        if timer is not None:
            timer.call_repeatedly(interval, self.consumer_tick)
        self.file.beat()

        async def spawn() -> None:
            self._task = asyncio.get_running_loop().create_task(self._loop(interval))

        loop_runner.run(spawn())

    async def _loop(self, interval: float) -> None:
        while True:
            if time.monotonic() - self.consumer_at < self.settings.liveness_stale_s:
                try:
                    self.file.beat()
                except OSError:
                    log.warning("cannot write the heartbeat file %s", self.file.path)
            await asyncio.sleep(interval)


class HeartbeatScheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery beat's persistent scheduler that also writes beat's heartbeat file on
    every tick (beat ticks at least every ``beat_max_loop_interval``)."""

    _heartbeat: HeartbeatFile | None = None
    _last_beat = 0.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        now = time.monotonic()
        settings = get_settings()
        if now - self._last_beat >= min(1.0, settings.liveness_interval_s):
            try:
                if self._heartbeat is None:
                    self._heartbeat = HeartbeatFile(settings, "beat")
                self._heartbeat.beat()
                self._last_beat = now
            except OSError:
                log.warning("cannot write beat's heartbeat file")
        result: float = super().tick(*args, **kwargs)
        return result

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.remove()  # a stopped beat is not a stale one
        super().close()
