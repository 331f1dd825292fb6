"""Compaction job (queue ``summarize``, its own worker pool): shrink the model's view.

    await request_compaction(rt, session_id)   # after a turn: at most one pending per session
    await compact(rt, session_id)              # in the summarizer pool

No session lock is taken and no chat turn waits (I7): read a snapshot, summarize,
commit by compare-and-swap on the compaction mark; a lost CAS retries on fresh
data.  A failed or empty summary raises SummaryError before anything is written,
is logged in ``compactions`` with its error, and the task retries with backoff.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime

from redis.exceptions import RedisError

from shared import keys, metrics
from shared.compaction.base import SummaryError
from shared.compaction.store import CompactionStore
from shared.compaction.strategies import get_strategy
from workers.runtime import Runtime

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 5


async def request_compaction(
    rt: Runtime, session_id: str, *, stale_after_s: float | None = None
) -> bool:
    """Queue one compaction for the session unless one is already pending.

    The pending mark holds the time of the request.  ``stale_after_s`` (the reaper, when
    the summarize queue is empty): a mark older than that belongs to a request whose
    message a killed summarizer took with it -- received, not yet started, so it sits
    unacked until ``visibility_timeout`` -- and the request is made again.
    """
    key = keys.compact_pending_key(session_id)
    ttl = rt.settings.compaction_pending_ttl_s
    now = time.time()
    try:
        fresh = await rt.redis.set(key, repr(now), nx=True, ex=ttl)
        if not fresh and stale_after_s is not None:
            since = _seconds(await rt.redis.get(key))
            if since is not None and now - since > stale_after_s:
                fresh = await rt.redis.set(key, repr(now), xx=True, ex=ttl)
                log.warning(
                    "compaction request lost with its worker; asking again",
                    extra={"session_id": session_id},
                )
    except RedisError:
        return False  # the reaper asks again for sessions still over budget
    if fresh:
        await rt.kick(keys.COMPACT_TASK, session_id)
    return bool(fresh)


def _seconds(value: bytes | str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return 0.0  # a mark from before marks held their time: old enough


async def compact(rt: Runtime, session_id: str) -> str:
    with contextlib.suppress(RedisError):
        await rt.redis.delete(keys.compact_pending_key(session_id))
    cstore = CompactionStore(rt.db)
    strategy = get_strategy(rt.policy.strategy)
    for attempt in range(1, CAS_ATTEMPTS + 1):
        started = datetime.now(UTC)
        snap = await cstore.snapshot(session_id)
        if snap is None:
            return "gone"
        try:
            result = await strategy.compact(snap, rt.policy, rt.summarizer())
        except SummaryError as exc:
            await cstore.record(
                session_id,
                strategy=strategy.name,
                status="failed",
                old_mark=snap.mark,
                started_at=started,
                tokens_before=snap.tokens,
                error=str(exc) or type(exc).__name__,
                attempt=attempt,
            )
            metrics.COMPACTIONS.labels(strategy=strategy.name, status="failed").inc()
            log.warning(
                "compaction failed; nothing committed, will retry",
                extra={"session_id": session_id, "error": str(exc)[:200]},
            )
            raise
        if result is None:
            metrics.COMPACTIONS.labels(strategy=strategy.name, status="noop").inc()
            return "noop"
        after = await cstore.commit(
            snap, result, strategy=strategy.name, started_at=started, attempt=attempt
        )
        status = "succeeded" if after is not None else "conflict"
        metrics.COMPACTIONS.labels(strategy=strategy.name, status=status).inc()
        if after is not None:
            log.info(
                "compacted",
                extra={"session_id": session_id, "before": snap.tokens, "after": after},
            )
            return "compacted"
    return "conflict"
