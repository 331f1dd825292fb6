"""Beat job: re-kick sessions whose pending turns have no kick in flight and no live lock.

Postgres says which turns are pending; Redis may have lost their kicks (a flushed
or restarted Redis, a deleted message) or their worker (kill -9: its lock expires
after the TTL).  Re-kicking is always safe: a drain that finds the lock held exits,
one that finds nothing pending returns.  One sweeper at a time (a Redis lock per
interval), bounded batches, oldest first.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from shared import keys, metrics
from shared.compaction.store import CompactionStore
from workers.compact import request_compaction
from workers.runtime import Runtime

log = logging.getLogger(__name__)

BATCH = 1000


async def reap(rt: Runtime) -> int:
    """Returns how many sessions were re-kicked."""
    s = rt.settings
    try:
        mine = await rt.redis.set(
            keys.reaper_key(), "1", nx=True, px=max(100, int(s.reaper_interval_s * 900))
        )
    except RedisError:
        log.warning("reaper: Redis unreachable; skipping this pass")
        metrics.BEAT_JOBS.labels(job="reap", outcome="failed").inc()
        return 0
    if not mine:
        metrics.BEAT_JOBS.labels(job="reap", outcome="skipped").inc()
        return 0
    try:
        kicked = await _rekick_stale_turns(rt)
        kicked += await _expire_approvals(rt)
        await _request_overdue_compactions(rt)
        await _expire_journal(rt)
    except Exception:
        metrics.BEAT_JOBS.labels(job="reap", outcome="failed").inc()
        raise
    metrics.BEAT_JOBS.labels(job="reap", outcome="ran").inc()
    return kicked


async def _rekick_stale_turns(rt: Runtime) -> int:
    stale = await rt.sweeps.stale_sessions(rt.settings.reaper_stale_s, BATCH)
    if not stale:
        return 0
    async with rt.redis.pipeline(transaction=False) as pipe:
        for sid in stale:
            pipe.exists(keys.lock_key(sid))
        live = await pipe.execute()
    orphaned = [sid for sid, held in zip(stale, live, strict=True) if not held]
    for sid in orphaned:
        await rt.kick(keys.DRAIN_TASK, sid)
    # Sessions whose lock is live are marked too, so a big backlog rotates through the batch.
    await rt.sweeps.mark_kicked(stale)
    if orphaned:
        metrics.REAPER_RECOVERIES.inc(len(orphaned))
        log.info("reaper re-kicked sessions", extra={"count": len(orphaned)})
    return len(orphaned)


async def _expire_approvals(rt: Runtime) -> int:
    """Reject approvals nobody decided within their TTL; the turns answer (I13)."""
    default_s, by_agent = rt.approval_ttl
    expired, resumed = await rt.sweeps.expire_approvals(default_s, by_agent, BATCH)
    if expired:
        metrics.APPROVALS_DECIDED.labels(decision="expired").inc(expired)
        log.info("reaper expired approvals", extra={"count": expired, "resumed": len(resumed)})
    for sid in resumed:
        await rt.kick(keys.DRAIN_TASK, sid)
    return len(resumed)


async def _expire_journal(rt: Runtime) -> None:
    """Finished turns' step journals, past their audit retention, one bounded batch a pass."""
    if rt.settings.journal_retention_s > 0:
        removed = await rt.sweeps.expire_journal(rt.settings.journal_retention_s, BATCH)
        if removed:
            metrics.JOURNAL_STEPS_EXPIRED.inc(removed)


async def _request_overdue_compactions(rt: Runtime) -> None:
    """Sessions over the trigger whose compaction request was lost (Redis flushed, or its
    message died with a killed summarizer: then the queue is empty but the session still
    has an old pending mark)."""
    overdue = await CompactionStore(rt.db).over_budget(rt.policy.trigger_tokens, BATCH)
    if not overdue:
        return
    queued = await rt.broker.llen(keys.queue(keys.SUMMARIZE_QUEUE, rt.settings.namespace))
    stale = rt.settings.reaper_stale_s if queued == 0 else None
    for sid in overdue:
        await request_compaction(rt, sid, stale_after_s=stale)
