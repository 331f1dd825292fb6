"""What the beat reaper reads and writes: sessions whose runnable turns lost their kick.

    sweeps = MaintenanceStore(db)
    stale = await sweeps.stale_sessions(stale_s=30, limit=1000)   # oldest first
    await sweeps.mark_kicked(stale)

Only the deployment's own namespace: two deployments sharing a database never re-kick
each other's sessions (their agents and queues differ).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import text

from shared.sql import render
from shared.store.db import Database

_STALE = render(
    """
    SELECT t.session_id::text, min(COALESCE(t.last_kick_at, t.queued_at)) AS since
    FROM turns t JOIN sessions s ON s.id = t.session_id
    WHERE t.status IN {{in:runnable}} AND s.namespace = :ns
      AND COALESCE(t.last_kick_at, t.queued_at) < now() - make_interval(secs => :stale)
    GROUP BY t.session_id
    ORDER BY since
    LIMIT :limit
    """
)

# The mark never waits for a row a drain holds: a drain's commit locks its running turn,
# then claims the next queued one, while a plain multi-row UPDATE here locked rows of many
# sessions in scan order -- a queued turn first, then waiting for the running one: a
# deadlock, one side aborted after deadlock_timeout.  An aborted drain left its turn to be
# run again (an attempt no fault caused) and every drain behind those rows stalled.  A row
# skipped here is being written by its holder right now; it stays stale and the next pass
# looks at it again.
_MARK = render(
    """
    UPDATE turns t SET last_kick_at = now()
    FROM (SELECT id FROM turns
          WHERE session_id = ANY(CAST(:ids AS uuid[])) AND status IN {{in:runnable}}
          FOR UPDATE SKIP LOCKED) free
    WHERE t.id = free.id
    """
)


class MaintenanceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def stale_sessions(self, stale_s: float, limit: int) -> list[str]:
        """Sessions with a runnable turn whose last kick is older than ``stale_s``, the
        longest waiting first."""
        async with self.db.autocommit() as conn:
            rows = (
                await conn.execute(
                    text(_STALE), {"stale": stale_s, "limit": limit, "ns": self.db.namespace}
                )
            ).all()
        return [r[0] for r in rows]

    async def expire_approvals(
        self, ttl_s: float, ttl_by_agent: dict[str, float], limit: int
    ) -> tuple[int, list[str]]:
        """Reject approvals nobody decided in time (turnq_expire_approvals); returns how many
        expired and the sessions whose turn resumed (to kick)."""
        rows = await self.db.call_all(
            "SELECT * FROM turnq_expire_approvals(:ns, :ttl, CAST(:ttls AS jsonb), :limit)",
            {"ns": self.db.namespace, "ttl": ttl_s, "ttls": json.dumps(ttl_by_agent),
             "limit": limit},
        )  # fmt: skip
        expired = max((int(r["expired"]) for r in rows), default=0)
        return expired, [r["session_id"] for r in rows if r["session_id"] is not None]

    async def expire_journal(self, age_s: float, limit: int) -> int:
        """Delete the step journal of turns finished over ``age_s`` ago (one bounded batch)."""
        row = await self.db.call(
            "SELECT turnq_expire_journal(:ns, :age, :limit) AS n",
            {"ns": self.db.namespace, "age": age_s, "limit": limit},
        )
        return int(row["n"]) if row is not None else 0

    async def mark_kicked(self, session_ids: Sequence[str]) -> None:
        """Note the kick on the sessions' runnable turns; rows locked by a drain's
        statement are skipped, never waited for (a wait here could deadlock with it)."""
        if not session_ids:
            return
        async with self.db.engine.begin() as conn:
            await conn.execute(text(_MARK), {"ids": list(session_ids)})
