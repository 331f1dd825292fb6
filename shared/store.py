"""Postgres store: every read and write of sessions, turns and items.

    engine = create_engine(settings.require_database_url())
    store = Store(engine)
    turn, created = await store.enqueue("alice", "support-1", "Hi", idempotency_key=None)

The store only stores: which transitions are legal lives in ``shared.status``;
when to make them lives in ``workers/turn.py``.  Every worker write runs in one
transaction that first checks the session's fence (``UPDATE sessions ... WHERE
fence = :fence``), so a worker that lost its lock can never merge a stale result
(I1), and a turn's items are appended in the same transaction that marks it
succeeded, so retries never duplicate history (I4).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shared.errors import Fenced, IdempotencyConflict, SessionBusy
from shared.multitask import Multitask
from shared.status import TurnStatus, sources_of

Item = dict[str, Any]


def create_engine(
    database_url: str, *, pool_size: int = 10, pool_timeout: float = 30.0
) -> AsyncEngine:
    """A bounded pool: waiting for a connection beats exhausting ``max_connections``."""
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=max(1, pool_size // 2),
        pool_timeout=pool_timeout,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def estimate_tokens(item: object) -> int:
    """Cheap token estimate (~4 characters a token) until the model measures the context."""
    raw = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
    return max(1, len(raw) // 4)


@dataclass(frozen=True)
class TurnRecord:
    id: str
    session_id: str
    seq: int
    status: TurnStatus
    input: str
    output: str | None
    error: str | None
    attempts: int
    usage: dict[str, Any] | None
    context_tokens: int | None
    idempotency_key: str | None
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    user_id: str
    session_key: str

    @property
    def terminal(self) -> bool:
        return self.status in (TurnStatus.SUCCEEDED, TurnStatus.FAILED, TurnStatus.CANCELLED)


@dataclass(frozen=True)
class SessionRecord:
    id: str
    user_id: str
    key: str
    created_at: datetime
    updated_at: datetime
    turn_count: int
    item_count: int
    fence: int
    context_tokens: int
    transcript_tokens: int
    compaction_mark: int
    summary: str | None
    summary_tokens: int
    summary_items: list[Item] = field(default_factory=list)
    compacted_at: datetime | None = None
    compaction_count: int = 0


@dataclass(frozen=True)
class Context:
    """What the model sees: the summary (if any) and the items after the compaction mark."""

    summary: str | None
    items: list[Item]
    first_position: int
    summary_items: list[Item] = field(default_factory=list)


_TURN_COLUMNS = """
    t.id::text AS id, t.session_id::text AS session_id, t.seq, t.status, t.input, t.output,
    t.error, t.attempts, t.usage, t.context_tokens, t.idempotency_key, t.queued_at,
    t.started_at, t.finished_at, s.user_id, s.key AS session_key
"""


def _turn(row: Any) -> TurnRecord:
    m = row._mapping
    return TurnRecord(
        id=m["id"],
        session_id=m["session_id"],
        seq=m["seq"],
        status=TurnStatus(m["status"]),
        input=m["input"],
        output=m["output"],
        error=m["error"],
        attempts=m["attempts"],
        usage=m["usage"],
        context_tokens=m["context_tokens"],
        idempotency_key=m["idempotency_key"],
        queued_at=m["queued_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        user_id=m["user_id"],
        session_key=m["session_key"],
    )


def _session(row: Any) -> SessionRecord:
    m = dict(row._mapping)
    m["id"] = str(m["id"])
    return SessionRecord(**m)


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def close(self) -> None:
        await self.engine.dispose()

    # ------------------------------------------------------------------ producer
    async def enqueue(
        self,
        user_id: str,
        key: str,
        content: str,
        idempotency_key: str | None,
        multitask: Multitask = Multitask.ENQUEUE,
    ) -> tuple[TurnRecord, bool, list[str]]:
        """Commit a new turn (or find the one with this idempotency key).

        Returns (turn, created, ids of running turns asked to stop).  The upsert takes the
        session row's lock, so concurrent enqueues on one session serialise, sequence
        numbers have no gaps and no duplicates, and the multitask decision sees a stable
        set of pending turns.
        """
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        """
                INSERT INTO sessions (id, user_id, key, turn_count)
                VALUES (:new_id, :user_id, :key, 1)
                ON CONFLICT (user_id, key) DO UPDATE
                    SET turn_count = sessions.turn_count + 1, updated_at = now()
                RETURNING id::text, turn_count
                """
                    ),
                    {"new_id": str(uuid.uuid4()), "user_id": user_id, "key": key},
                )
            ).one()
            session_id, seq = row[0], row[1]
            if idempotency_key is not None:
                existing = (
                    await conn.execute(
                        text(
                            f"SELECT {_TURN_COLUMNS} FROM turns t JOIN sessions s "
                            "ON s.id = t.session_id "
                            "WHERE t.session_id = :sid AND t.idempotency_key = :k"
                        ),
                        {"sid": session_id, "k": idempotency_key},
                    )
                ).first()
                if existing is not None:
                    await conn.rollback()  # undo the turn_count bump: no gap in seq
                    turn = _turn(existing)
                    if turn.input != content:
                        raise IdempotencyConflict(idempotency_key, turn.id)
                    return turn, False, []
            if multitask is Multitask.REJECT:
                busy = (
                    await conn.execute(
                        text(
                            "SELECT id::text, status FROM turns WHERE session_id = :sid "
                            "AND status IN ('queued', 'running') ORDER BY seq LIMIT 1"
                        ),
                        {"sid": session_id},
                    )
                ).first()
                if busy is not None:
                    await conn.rollback()
                    raise SessionBusy(busy[0], busy[1])
            stopping: list[str] = []
            if multitask in (Multitask.INTERRUPT, Multitask.ROLLBACK):
                stopping = await self._cancel_pending(conn, session_id, seq, multitask.value)
            row = (
                await conn.execute(
                    text(
                        f"""
                WITH t AS (
                    INSERT INTO turns (id, session_id, seq, input, idempotency_key)
                    VALUES (:id, :sid, :seq, :input, :k)
                    RETURNING *
                )
                SELECT {_TURN_COLUMNS} FROM t JOIN sessions s ON s.id = t.session_id
                """
                    ),
                    {
                        "id": str(uuid.uuid4()),
                        "sid": session_id,
                        "seq": seq,
                        "input": content,
                        "k": idempotency_key,
                    },
                )
            ).one()
            return _turn(row), True, stopping

    async def _cancel_pending(
        self, conn: AsyncConnection, session_id: str, before_seq: int, mode: str
    ) -> list[str]:
        """Queued turns are cancelled now; the running one is asked to stop (returned)."""
        await conn.execute(
            text(
                "UPDATE turns SET status = 'cancelled', finished_at = now(), "
                "error = :why WHERE session_id = :sid AND status = 'queued' AND seq < :seq"
            ),
            {
                "sid": session_id,
                "seq": before_seq,
                "why": f"cancelled: {mode} by turn {before_seq}",
            },
        )
        rows = (
            await conn.execute(
                text(
                    "UPDATE turns SET cancel_mode = COALESCE(cancel_mode, :mode), "
                    "cancel_requested_at = COALESCE(cancel_requested_at, now()) "
                    "WHERE session_id = :sid AND status = 'running' RETURNING id::text"
                ),
                {"sid": session_id, "mode": mode},
            )
        ).all()
        return [r[0] for r in rows]

    async def get_turn(self, turn_id: str, user_id: str | None = None) -> TurnRecord | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        f"SELECT {_TURN_COLUMNS} FROM turns t JOIN sessions s "
                        "ON s.id = t.session_id WHERE t.id = :id "
                        "AND (CAST(:u AS text) IS NULL OR s.user_id = :u)"
                    ),
                    {"id": turn_id, "u": user_id},
                )
            ).first()
        # Another user's turn is filtered in the same query, so it costs what a missing one does.
        return _turn(row) if row is not None else None

    async def get_session(self, user_id: str, key: str) -> SessionRecord | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT * FROM sessions WHERE user_id = :u AND key = :k"),
                    {"u": user_id, "k": key},
                )
            ).first()
        return _session(row) if row is not None else None

    async def get_session_by_id(self, session_id: str) -> SessionRecord | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT * FROM sessions WHERE id = :id"), {"id": session_id}
                )
            ).first()
        return _session(row) if row is not None else None

    async def history(
        self, session_id: str, *, after: int = -1, limit: int | None = None
    ) -> list[tuple[int, str | None, Item]]:
        """The transcript, oldest first: (position, turn id, item)."""
        sql = (
            "SELECT position, turn_id::text, item FROM items "
            "WHERE session_id = :sid AND position > :after ORDER BY position"
        )
        params: dict[str, Any] = {"sid": session_id, "after": after}
        if limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = limit
        async with self.engine.connect() as conn:
            rows = (await conn.execute(text(sql), params)).all()
        return [(r[0], r[1], r[2]) for r in rows]

    async def turns_of(self, session_id: str) -> list[TurnRecord]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        f"SELECT {_TURN_COLUMNS} FROM turns t JOIN sessions s "
                        "ON s.id = t.session_id WHERE t.session_id = :sid ORDER BY t.seq"
                    ),
                    {"sid": session_id},
                )
            ).all()
        return [_turn(r) for r in rows]

    # ------------------------------------------------------------------ worker
    async def bump_fence(self, session_id: str) -> int | None:
        """Called right after taking the session lock: invalidates every older holder."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    text("UPDATE sessions SET fence = fence + 1 WHERE id = :sid RETURNING fence"),
                    {"sid": session_id},
                )
            ).first()
        return int(row[0]) if row is not None else None

    async def claim_next(
        self, session_id: str, fence: int, max_attempts: int
    ) -> tuple[TurnRecord | None, list[TurnRecord]]:
        """Mark the session's lowest pending turn running under ``fence``.

        A turn that already used ``max_attempts`` (it keeps killing its workers) is
        failed instead of run again; those are returned second so the caller can
        announce them.  Raises Fenced if another worker has taken the session.
        """
        gave_up: list[TurnRecord] = []
        async with self.engine.begin() as conn:
            await self._check_fence(conn, session_id, fence)
            while True:
                row = (
                    await conn.execute(
                        text(
                            f"SELECT {_TURN_COLUMNS} FROM turns t JOIN sessions s "
                            "ON s.id = t.session_id WHERE t.session_id = :sid "
                            "AND t.status IN ('queued', 'running') ORDER BY t.seq LIMIT 1"
                        ),
                        {"sid": session_id},
                    )
                ).first()
                if row is None:
                    return None, gave_up
                turn = _turn(row)
                if turn.attempts >= max_attempts:
                    await self._finish(
                        conn,
                        turn.id,
                        fence,
                        TurnStatus.FAILED,
                        error=f"gave up after {turn.attempts} attempts that did not finish "
                        "(its worker died or lost Postgres/Redis each time)",
                        check_fence=False,
                    )
                    gave_up.append(turn)
                    continue
                row = (
                    await conn.execute(
                        text(
                            f"""
                    WITH t AS (
                        UPDATE turns SET status = 'running', attempts = attempts + 1,
                            started_at = now(), fence = :fence
                        WHERE id = :id RETURNING *
                    )
                    SELECT {_TURN_COLUMNS} FROM t JOIN sessions s ON s.id = t.session_id
                    """
                        ),
                        {"id": turn.id, "fence": fence},
                    )
                ).one()
                return _turn(row), gave_up

    async def load_context(self, session_id: str) -> Context:
        async with self.engine.connect() as conn:
            srow = (
                await conn.execute(
                    text(
                        "SELECT summary, compaction_mark, summary_items FROM sessions "
                        "WHERE id = :sid"
                    ),
                    {"sid": session_id},
                )
            ).one()
            rows = (
                await conn.execute(
                    text(
                        "SELECT item FROM items WHERE session_id = :sid AND position >= :mark "
                        "ORDER BY position"
                    ),
                    {"sid": session_id, "mark": srow[1]},
                )
            ).all()
        return Context(
            summary=srow[0],
            items=[r[0] for r in rows],
            first_position=srow[1],
            summary_items=list(srow[2] or []),
        )

    async def complete_turn(
        self,
        turn: TurnRecord,
        fence: int,
        new_items: Sequence[Item],
        output: str | None,
        usage: dict[str, Any] | None,
        context_tokens: int | None,
    ) -> tuple[int, TurnStatus]:
        """Append the turn's items and finish it, atomically and fenced.

        A cancel request recorded meanwhile decides the outcome here, under the turn's
        row lock: ``rollback`` writes no items, ``interrupt`` keeps them (the caller
        passes them repaired); both end ``cancelled``.  Returns the session's context
        size after the turn and the status the turn ended with.
        """
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        """
                WITH s AS (SELECT id FROM sessions WHERE id = :sid AND fence = :fence FOR UPDATE),
                     t AS (SELECT cancel_mode FROM turns WHERE id = :tid FOR UPDATE)
                SELECT t.cancel_mode FROM s, t
                """
                    ),
                    {"sid": turn.session_id, "fence": fence, "tid": turn.id},
                )
            ).first()
            if row is None:
                raise Fenced(f"session {turn.session_id}: fence {fence} is stale")
            cancel_mode = row[0]
            status = TurnStatus.SUCCEEDED if cancel_mode is None else TurnStatus.CANCELLED
            if cancel_mode == "rollback":
                new_items, context_tokens = [], None
            tokens = [estimate_tokens(i) for i in new_items]
            counts = (
                await conn.execute(
                    text(
                        """
                UPDATE sessions SET item_count = item_count + :n, updated_at = now(),
                    transcript_tokens = transcript_tokens + :tokens,
                    context_tokens = COALESCE(:ctx, context_tokens)
                WHERE id = :sid
                RETURNING item_count, context_tokens
                """
                    ),
                    {
                        "n": len(new_items),
                        "tokens": sum(tokens),
                        "ctx": context_tokens,
                        "sid": turn.session_id,
                    },
                )
            ).one()
            first = int(counts[0]) - len(new_items)
            if new_items:
                await conn.execute(
                    text(
                        "INSERT INTO items (session_id, position, turn_id, item, tokens) "
                        "VALUES (:sid, :pos, :tid, CAST(:item AS jsonb), :tokens)"
                    ),
                    [
                        {
                            "sid": turn.session_id,
                            "pos": first + i,
                            "tid": turn.id,
                            "item": json.dumps(item, ensure_ascii=False),
                            "tokens": tokens[i],
                        }
                        for i, item in enumerate(new_items)
                    ],
                )
            await self._finish(
                conn,
                turn.id,
                fence,
                status,
                output=output if cancel_mode != "rollback" else None,
                error=f"cancelled ({cancel_mode})" if cancel_mode else None,
                usage=usage,
                context_tokens=context_tokens,
                check_fence=False,
            )
            return int(counts[1]), status

    async def cancel_mode(self, turn_id: str) -> str | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT cancel_mode FROM turns WHERE id = :id"), {"id": turn_id}
                )
            ).first()
        return row[0] if row is not None else None

    async def fail_turn(self, turn: TurnRecord, fence: int, error: str) -> None:
        async with self.engine.begin() as conn:
            await self._check_fence(conn, turn.session_id, fence)
            await self._finish(conn, turn.id, fence, TurnStatus.FAILED, error=error)

    async def has_pending(self, session_id: str) -> bool:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT 1 FROM turns WHERE session_id = :sid "
                        "AND status IN ('queued', 'running') LIMIT 1"
                    ),
                    {"sid": session_id},
                )
            ).first()
        return row is not None

    # ------------------------------------------------------------------ reaper
    async def stale_sessions(self, stale_s: float, limit: int) -> list[str]:
        """Sessions with a pending turn whose last kick is older than ``stale_s``."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        """
                SELECT DISTINCT session_id::text FROM turns
                WHERE status IN ('queued', 'running')
                  AND COALESCE(last_kick_at, queued_at) < now() - make_interval(secs => :stale)
                LIMIT :limit
                """
                    ),
                    {"stale": stale_s, "limit": limit},
                )
            ).all()
        return [r[0] for r in rows]

    async def mark_kicked(self, session_ids: Sequence[str]) -> None:
        if not session_ids:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE turns SET last_kick_at = now() "
                    "WHERE session_id = ANY(CAST(:ids AS uuid[])) "
                    "AND status IN ('queued', 'running')"
                ),
                {"ids": list(session_ids)},
            )

    # ------------------------------------------------------------------ helpers
    async def _check_fence(self, conn: AsyncConnection, session_id: str, fence: int) -> None:
        row = (
            await conn.execute(
                text("SELECT fence FROM sessions WHERE id = :sid FOR UPDATE"),
                {"sid": session_id},
            )
        ).first()
        if row is None or int(row[0]) != fence:
            raise Fenced(f"session {session_id}: fence {fence} is stale")

    async def _finish(
        self,
        conn: AsyncConnection,
        turn_id: str,
        fence: int,
        status: TurnStatus,
        *,
        output: str | None = None,
        error: str | None = None,
        usage: dict[str, Any] | None = None,
        context_tokens: int | None = None,
        check_fence: bool = True,
    ) -> None:
        result = await conn.execute(
            text(
                """
            UPDATE turns SET status = :status, output = :output, error = :error,
                usage = CAST(:usage AS jsonb), context_tokens = :ctx, finished_at = now()
            WHERE id = :id AND status = ANY(:sources)
            """
                + (" AND fence = :fence" if check_fence else "")
            ),
            {
                "status": status.value,
                "output": output,
                "error": error,
                "usage": json.dumps(usage) if usage is not None else None,
                "ctx": context_tokens,
                "id": turn_id,
                "sources": sources_of(status),
                "fence": fence,
            },
        )
        if result.rowcount != 1:
            raise Fenced(f"turn {turn_id} is no longer ours to finish")
