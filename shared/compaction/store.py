"""Postgres side of compaction: snapshot the model's view, commit by compare-and-swap.

    snap = await cstore.snapshot(session_id)
    committed = await cstore.commit(snap, result, strategy="summarize")

A compaction never takes the session lock (I7).  It reads a snapshot (items are
written a whole turn per transaction, so any read ends at a turn boundary),
summarizes outside any transaction, and commits only if the mark has not moved
since the snapshot.  Turns committed meanwhile sit after the new mark, untouched;
nothing is ever deleted (I9).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.compaction.base import CompactionResult, Snapshot, ViewItem
from shared.store import Database, estimate_tokens


class CompactionStore:
    def __init__(self, db: Database) -> None:
        self.engine = db.engine
        self.namespace = db.namespace

    async def snapshot(self, session_id: str) -> Snapshot | None:
        async with self.engine.connect() as conn:
            srow = (
                await conn.execute(
                    text(
                        "SELECT compaction_mark, summary, summary_items, summary_tokens "
                        "FROM sessions WHERE id = :sid"
                    ),
                    {"sid": session_id},
                )
            ).first()
            if srow is None:
                return None
            rows = (
                await conn.execute(
                    text(
                        "SELECT position, item, tokens FROM items "
                        "WHERE session_id = :sid AND position >= :mark ORDER BY position"
                    ),
                    {"sid": session_id, "mark": srow[0]},
                )
            ).all()
        return Snapshot(
            session_id=session_id,
            mark=int(srow[0]),
            summary=srow[1],
            summary_items=list(srow[2] or []),
            items=[ViewItem(int(r[0]), r[1], int(r[2])) for r in rows],
            summary_tokens=int(srow[3]),
        )

    async def commit(
        self, snap: Snapshot, result: CompactionResult, *, strategy: str, started_at: datetime,
        attempt: int = 1,
    ) -> int | None:  # fmt: skip
        """Move the mark if nobody else has; returns the new context size, or None on a lost CAS.

        The log row is written in the same transaction, and the transaction does not wait
        for its WAL flush: a compaction lost in a crash is simply done again, while chat
        commits sharing the flush with a busy summarizer pool would wait longer.
        """
        summary_tokens = (estimate_tokens(result.summary) if result.summary else 0) + sum(
            estimate_tokens(i) for i in result.summary_items
        )
        async with self.engine.begin() as conn:
            await conn.execute(text("SET LOCAL synchronous_commit = off"))
            row = (
                await conn.execute(
                    text(
                        """
                UPDATE sessions SET
                    compaction_mark = :new_mark, summary = :summary,
                    summary_items = CAST(:summary_items AS jsonb),
                    summary_tokens = :summary_tokens,
                    context_tokens = :summary_tokens + COALESCE((
                        SELECT sum(tokens) FROM items
                        WHERE session_id = :sid AND position >= :new_mark), 0),
                    compacted_at = now(), compaction_count = compaction_count + 1
                WHERE id = :sid AND compaction_mark = :old_mark
                RETURNING context_tokens
                """
                    ),
                    {
                        "sid": snap.session_id,
                        "old_mark": snap.mark,
                        "new_mark": result.new_mark,
                        "summary": result.summary,
                        "summary_items": json.dumps(result.summary_items, ensure_ascii=False),
                        "summary_tokens": summary_tokens,
                    },
                )
            ).first()
            after = int(row[0]) if row is not None else None
            await self._insert_log(
                conn,
                snap.session_id,
                strategy=strategy,
                status="succeeded" if after is not None else "conflict",
                old_mark=snap.mark,
                new_mark=result.new_mark,
                started_at=started_at,
                tokens_before=snap.tokens,
                tokens_after=after,
                error=None,
                attempt=attempt,
            )
        return after

    async def record(
        self,
        session_id: str,
        *,
        strategy: str,
        status: str,
        old_mark: int,
        started_at: datetime,
        new_mark: int | None = None,
        tokens_before: int | None = None,
        tokens_after: int | None = None,
        error: str | None = None,
        attempt: int = 1,
    ) -> None:
        """The compactions log: every attempt and its outcome stays visible to operators."""
        async with self.engine.begin() as conn:
            await conn.execute(text("SET LOCAL synchronous_commit = off"))
            await self._insert_log(
                conn,
                session_id,
                strategy=strategy,
                status=status,
                old_mark=old_mark,
                new_mark=new_mark,
                started_at=started_at,
                tokens_before=tokens_before,
                tokens_after=tokens_after,
                error=error,
                attempt=attempt,
            )

    @staticmethod
    async def _insert_log(conn: AsyncConnection, session_id: str, **f: Any) -> None:
        await conn.execute(
            text(
                """
                INSERT INTO compactions (id, session_id, strategy, status, old_mark, new_mark,
                    tokens_before, tokens_after, error, attempt, started_at)
                SELECT :id, :sid, :strategy, :status, :old_mark, :new_mark, :before, :after,
                    :error, :attempt, :started_at
                WHERE EXISTS (SELECT 1 FROM sessions WHERE id = :sid)
                """
            ),
            {
                "id": str(uuid.uuid4()),
                "sid": session_id,
                "strategy": f["strategy"],
                "status": f["status"],
                "old_mark": f["old_mark"],
                "new_mark": f["new_mark"],
                "before": f["tokens_before"],
                "after": f["tokens_after"],
                "error": f["error"][:2000] if f["error"] else None,
                "attempt": f["attempt"],
                "started_at": f["started_at"],
            },
        )

    async def history(self, session_id: str, limit: int = 20) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT strategy, status, old_mark, new_mark, tokens_before, tokens_after, "
                        "error, attempt, started_at, finished_at FROM compactions "
                        "WHERE session_id = :sid ORDER BY finished_at DESC LIMIT :limit"
                    ),
                    {"sid": session_id, "limit": limit},
                )
            ).all()
        return [dict(r._mapping) for r in rows]

    async def over_budget(self, trigger_tokens: int, limit: int) -> list[str]:
        """Sessions above the trigger that no compaction has handled recently (reaper)."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        """
                SELECT id::text FROM sessions
                WHERE namespace = :ns AND context_tokens > :trigger
                  AND updated_at < now() - interval '5 seconds'
                  AND (compacted_at IS NULL OR compacted_at < updated_at)
                ORDER BY updated_at LIMIT :limit
                """
                    ),
                    {"trigger": trigger_tokens, "limit": limit, "ns": self.namespace},
                )
            ).all()
        return [r[0] for r in rows]
