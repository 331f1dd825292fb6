"""Postgres side of the beat maintenance jobs: session retention and cluster stats.

    report = await expire_idle_sessions(engine, older_than_s=30 * 86400, batch=500, batches=20)
    stats = await cluster_stats(engine, trigger_tokens=96_000)

**Retention deletes** (no archive): a session idle longer than the retention period
goes with its turns, items and compactions (``ON DELETE CASCADE``).  Deleting keeps
the promise a retention period makes to users; an archive would be a second copy to
secure and to expire.  Export first if you need one.

* Idle means ``sessions.updated_at`` is older than the cutoff.  Every enqueue and every
  committed turn bumps it; so do SDK-session writes.  Sessions created implicitly by
  an enqueue, or by the SDK ``Session`` protocol with no turns at all, are covered alike.
* A session with an open turn (queued, running or waiting) is never deleted, however old.
* Only the deployment's own namespace (``TURNQ_NAMESPACE``) is swept.
* Each batch is one transaction: ``SELECT ... FOR UPDATE SKIP LOCKED LIMIT batch`` then
  ``DELETE``.  Rows another transaction holds (an enqueue upserting the session, a
  second sweeper) are skipped, not waited for, so concurrent sweeps never delete the
  same session twice, never block chat, and never error.  An enqueue that commits
  between our snapshot and our row lock has moved ``updated_at``, which the locking
  read re-checks; an enqueue that comes after our delete creates a fresh session.
* A run does at most ``batches`` transactions; the rest waits for the next run, so a
  backlog (retention switched on for an old database) drains without a long lock or
  a burst of WAL.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.sql import render

_EXPIRE = text(
    render(
        """
    WITH doomed AS (
        SELECT s.id FROM sessions s
        WHERE s.updated_at < now() - make_interval(secs => :age) AND s.namespace = :ns
          AND NOT EXISTS (
              SELECT 1 FROM turns t
              WHERE t.session_id = s.id AND t.status IN {{in:open}}
          )
        ORDER BY s.updated_at
        LIMIT :batch
        FOR UPDATE OF s SKIP LOCKED
    )
    DELETE FROM sessions WHERE id IN (SELECT id FROM doomed)
    RETURNING id
    """
    )
)


@dataclass(frozen=True)
class RetentionReport:
    deleted: int
    batches: int
    complete: bool  # the last batch was short: nothing left to delete right now


async def expire_idle_sessions(
    engine: AsyncEngine, *, older_than_s: float, batch: int, batches: int, namespace: str = ""
) -> RetentionReport:
    deleted = 0
    done = 0
    complete = False
    for _ in range(batches):
        async with engine.begin() as conn:
            n = len(
                (
                    await conn.execute(
                        _EXPIRE, {"age": older_than_s, "batch": batch, "ns": namespace}
                    )
                ).all()
            )
        done += 1
        deleted += n
        if n < batch:
            complete = True
            break
    return RetentionReport(deleted=deleted, batches=done, complete=complete)


@dataclass(frozen=True)
class ClusterStats:
    turns_by_status: dict[str, int]
    oldest_queued_turn_age_s: float
    sessions_over_budget: int


async def cluster_stats(
    engine: AsyncEngine, *, trigger_tokens: int, namespace: str = ""
) -> ClusterStats:
    """One read-only transaction (consistent numbers), bounded by a statement timeout.

    Counting terminal turns scans the table; at tens of millions of turns, lengthen
    the metrics interval (``TURNQ_CLUSTER_METRICS_INTERVAL_S``).  The pending counts
    and the oldest queued turn use the partial indexes on pending turns.
    """
    async with engine.connect() as conn:
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        await conn.execute(text("SET LOCAL statement_timeout = '20s'"))
        rows = (
            await conn.execute(
                text(
                    "SELECT t.status, count(*) FROM turns t JOIN sessions s "
                    "ON s.id = t.session_id WHERE s.namespace = :ns GROUP BY t.status"
                ),
                {"ns": namespace},
            )
        ).all()
        oldest: float = (
            await conn.execute(
                text(
                    render(
                        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(t.queued_at)), 0) "
                        "FROM turns t JOIN sessions s ON s.id = t.session_id "
                        "WHERE t.status = {{status:queued}} AND s.namespace = :ns"
                    )
                ),
                {"ns": namespace},
            )
        ).scalar_one()
        over: int = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM sessions "
                    "WHERE context_tokens > :trigger AND namespace = :ns"
                ),
                {"trigger": trigger_tokens, "ns": namespace},
            )
        ).scalar_one()
        await conn.rollback()
    return ClusterStats(
        turns_by_status={str(r[0]): int(r[1]) for r in rows},
        oldest_queued_turn_age_s=max(0.0, float(oldest)),
        sessions_over_budget=int(over),
    )
