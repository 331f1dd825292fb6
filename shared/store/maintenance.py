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

_MARK = render(
    "UPDATE turns SET last_kick_at = now() WHERE session_id = ANY(CAST(:ids AS uuid[])) "
    "AND status IN {{in:runnable}}"
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

    async def mark_kicked(self, session_ids: Sequence[str]) -> None:
        if not session_ids:
            return
        async with self.db.engine.begin() as conn:
            await conn.execute(text(_MARK), {"ids": list(session_ids)})
