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

import functools
import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as SQLAlchemyPoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from shared.errors import Fenced, IdempotencyConflict, SessionBusy
from shared.multitask import Multitask
from shared.pgpool import FastPool, PoolTimeout, closed_by_server
from shared.status import TurnStatus, sources_of

Item = dict[str, Any]


def create_engine(
    database_url: str, *, pool_size: int = 10, pool_timeout: float = 30.0
) -> AsyncEngine:
    """A bounded pool: waiting for a connection beats exhausting ``max_connections``.

    Instead of SQLAlchemy's ``pool_pre_ping`` (a round trip on every checkout, ~5 per
    turn), a checked-out connection is tested locally: an idle connection has nothing
    to read, so a readable socket means the server closed it (a restart, an idle
    timeout) and the pool replaces it before anyone uses it.
    """
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=max(1, pool_size // 2),
        pool_timeout=pool_timeout,
        pool_recycle=1800,
    )
    event.listen(engine.sync_engine, "checkout", _discard_if_closed)
    return engine


@functools.cache
def _psycopg_style(sql: str) -> str:
    """``:name`` parameters (SQLAlchemy's text()) as psycopg's ``%(name)s``."""
    return re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", sql)


def _discard_if_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    if closed_by_server(getattr(dbapi_connection, "driver_connection", dbapi_connection)):
        raise DisconnectionError("the server closed the connection")


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


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a session: its fence, the turn to run now (if any) with its context."""

    fence: int
    turn: TurnRecord | None
    context: Context | None
    gave_up: list[str] = field(default_factory=list)


FENCED_SQLSTATE = "TQ001"  # raised by turnq_claim / turnq_complete (migration 0005)

_TURN_COLUMNS = """
    t.id::text AS id, t.session_id::text AS session_id, t.seq, t.status, t.input, t.output,
    t.error, t.attempts, t.usage, t.context_tokens, t.idempotency_key, t.queued_at,
    t.started_at, t.finished_at, s.user_id, s.key AS session_key
"""


# The common enqueue (no idempotency key, strategy "enqueue") as one statement: the
# session upsert takes the session row's lock for the statement, as in the general path.
_ENQUEUE = f"""
WITH s AS (
    INSERT INTO sessions (id, user_id, key, turn_count)
    VALUES (:new_id, :user_id, :key, 1)
    ON CONFLICT (user_id, key) DO UPDATE
        SET turn_count = sessions.turn_count + 1, updated_at = now()
    RETURNING id, user_id, key, turn_count
), t AS (
    INSERT INTO turns (id, session_id, seq, input)
    SELECT :id, s.id, s.turn_count, :input FROM s
    RETURNING *
)
SELECT {_TURN_COLUMNS} FROM t JOIN s ON s.id = t.session_id
"""


def _fields(row: Any) -> Mapping[str, Any]:
    """A result row as a mapping: SQLAlchemy rows and the fast path's dict rows alike."""
    return row if isinstance(row, Mapping) else row._mapping


def _turn(row: Any) -> TurnRecord:
    m = _fields(row)
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


def _context(row: Any) -> Context:
    m = _fields(row)
    return Context(
        summary=m["summary"],
        items=list(m["items"] or []),
        first_position=int(m["compaction_mark"]),
        summary_items=list(m["summary_items"] or []),
    )


def _claim(row: Any) -> Claim:
    m = _fields(row)
    claimed = m["id"] is not None
    return Claim(
        fence=int(m["fence"]),
        turn=_turn(m) if claimed else None,
        context=_context(m) if claimed else None,
        gave_up=list(m["gave_up"] or []),
    )


class Store:
    """Sessions, turns and items in Postgres.

    Most calls go through the SQLAlchemy ``engine``.  The per-turn statements (enqueue,
    claim, complete, turn reads) go through a psycopg pool on the same database in
    autocommit mode (``shared.pgpool``): SQLAlchemy's checkout and result layers cost
    ~0.25 ms a call, as much as the statement itself (docs/decisions/0005).
    """

    def __init__(self, engine: AsyncEngine, fast_pool_size: int | None = None) -> None:
        self.engine = engine
        size = engine.pool.size() if isinstance(engine.pool, QueuePool) else 5
        timeout = engine.pool.timeout() if isinstance(engine.pool, QueuePool) else 30.0
        self._fast = FastPool(
            engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
            max_size=fast_pool_size or size,
            timeout=timeout,
        )

    @classmethod
    def connect(cls, database_url: str, pool_size: int, pool_timeout: float = 30.0) -> Store:
        """A store whose two pools hold about ``pool_size * 1.5`` connections at most.

        The per-turn statements get ``pool_size`` connections (the fast pool); everything
        else (reads of history, compaction, session admin) half as many plus overflow.
        """
        engine = create_engine(
            database_url, pool_size=max(2, pool_size // 2), pool_timeout=pool_timeout
        )
        return cls(engine, fast_pool_size=pool_size)

    async def close(self) -> None:
        await self._fast.close()
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
        if idempotency_key is None and multitask is Multitask.ENQUEUE:
            row = await self._call(_ENQUEUE, {
                "new_id": str(uuid.uuid4()), "user_id": user_id, "key": key,
                "id": str(uuid.uuid4()), "input": content,
            })  # fmt: skip
            return _turn(row), True, []
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
        row = await self._call(
            f"SELECT {_TURN_COLUMNS} FROM turns t JOIN sessions s "
            "ON s.id = t.session_id WHERE t.id = :id "
            "AND (CAST(:u AS text) IS NULL OR s.user_id = :u)",
            {"id": turn_id, "u": user_id},
        )
        # Another user's turn is filtered in the same query, so it costs what a missing one does.
        return _turn(row) if row is not None else None

    async def get_session(self, user_id: str, key: str) -> SessionRecord | None:
        async with self._autocommit() as conn:
            row = (
                await conn.execute(
                    text("SELECT * FROM sessions WHERE user_id = :u AND key = :k"),
                    {"u": user_id, "k": key},
                )
            ).first()
        return _session(row) if row is not None else None

    async def get_session_by_id(self, session_id: str) -> SessionRecord | None:
        async with self._autocommit() as conn:
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
        async with self._autocommit() as conn:
            rows = (await conn.execute(text(sql), params)).all()
        return [(r[0], r[1], r[2]) for r in rows]

    async def turns_of(self, session_id: str) -> list[TurnRecord]:
        async with self._autocommit() as conn:
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
    async def claim(
        self, session_id: str, fence: int | None, max_attempts: int | None
    ) -> Claim | None:
        """Claim the session's lowest pending turn with its context, in one round trip.

        ``fence`` None bumps the session's fence (call it right after taking the lock:
        every older holder is invalidated), else the fence is checked (Fenced if stale).
        A turn that already used ``max_attempts`` (it keeps killing its workers) is
        failed instead of run again (``Claim.gave_up``).  ``max_attempts`` None claims
        nothing.  None: the session is gone.
        """
        row = await self._call(
            "SELECT * FROM turnq_claim(:sid, :fence, :max)",
            {"sid": session_id, "fence": fence, "max": max_attempts},
        )
        return _claim(row) if row is not None else None

    async def complete_and_claim(
        self,
        turn: TurnRecord,
        fence: int,
        new_items: Sequence[Item],
        output: str | None,
        usage: dict[str, Any] | None,
        context_tokens: int | None,
        max_attempts: int | None,
    ) -> tuple[int, TurnStatus, Claim]:
        """Append the turn's items and finish it, then claim the next: one fenced statement.

        A cancel request recorded meanwhile decides the outcome here, under the turn's
        row lock: ``rollback`` writes no items, ``interrupt`` keeps them (the caller
        passes them repaired); both end ``cancelled``.  Returns the session's context
        size after the turn, the status the turn ended with and the next claim
        (``max_attempts`` None: claim nothing).
        """
        row = await self._call(
            "SELECT * FROM turnq_complete(:sid, :fence, :tid, CAST(:items AS jsonb), :tokens, "
            ":output, CAST(:usage AS jsonb), :ctx, :max)",
            {
                "sid": turn.session_id,
                "fence": fence,
                "tid": turn.id,
                "items": json.dumps(list(new_items), ensure_ascii=False),
                "tokens": [estimate_tokens(i) for i in new_items],
                "output": output,
                "usage": json.dumps(usage) if usage is not None else None,
                "ctx": context_tokens,
                "max": max_attempts,
            },
        )
        if row is None:
            raise Fenced(f"session {turn.session_id} is gone")
        return int(row["after_tokens"]), TurnStatus(row["final_status"]), _claim(row)

    async def complete_turn(
        self,
        turn: TurnRecord,
        fence: int,
        new_items: Sequence[Item],
        output: str | None,
        usage: dict[str, Any] | None,
        context_tokens: int | None,
    ) -> tuple[int, TurnStatus]:
        """``complete_and_claim`` without claiming the next turn."""
        after, status, _ = await self.complete_and_claim(
            turn, fence, new_items, output, usage, context_tokens, max_attempts=None
        )
        return after, status

    async def bump_fence(self, session_id: str) -> int | None:
        """Invalidate every older holder of the session; None if the session is gone."""
        claimed = await self.claim(session_id, None, None)
        return claimed.fence if claimed is not None else None

    async def claim_next(
        self, session_id: str, fence: int, max_attempts: int
    ) -> tuple[TurnRecord | None, list[str]]:
        """``claim`` under a held fence: (the turn, ids of turns given up on)."""
        claimed = await self.claim(session_id, fence, max_attempts)
        if claimed is None:
            raise Fenced(f"session {session_id} is gone")
        return claimed.turn, claimed.gave_up

    async def load_context(self, session_id: str) -> Context:
        row = await self._call(
            """
            SELECT s.summary, s.compaction_mark, s.summary_items,
                (SELECT COALESCE(jsonb_agg(i.item ORDER BY i.position), '[]'::jsonb)
                 FROM items i WHERE i.session_id = s.id AND i.position >= s.compaction_mark)
                AS items
            FROM sessions s WHERE s.id = :sid
            """,
            {"sid": session_id},
        )
        if row is None:
            raise LookupError(f"session {session_id} does not exist")
        return _context(row)

    async def cancel_mode(self, turn_id: str) -> str | None:
        row = await self._call("SELECT cancel_mode FROM turns WHERE id = :id", {"id": turn_id})
        return row["cancel_mode"] if row is not None else None

    async def fail_turn(self, turn: TurnRecord, fence: int, error: str) -> None:
        """Mark a running turn failed, under the session's row lock and our fence."""
        async with self.engine.begin() as conn:
            await self._check_fence(conn, turn.session_id, fence)
            result = await conn.execute(
                text(
                    "UPDATE turns SET status = 'failed', error = :error, finished_at = now() "
                    "WHERE id = :id AND status = ANY(:sources) AND fence = :fence"
                ),
                {
                    "error": error,
                    "id": turn.id,
                    "sources": sources_of(TurnStatus.FAILED),
                    "fence": fence,
                },
            )
            if result.rowcount != 1:
                raise Fenced(f"turn {turn.id} is no longer ours to finish")

    async def has_pending(self, session_id: str) -> bool:
        row = await self._call(
            "SELECT 1 FROM turns WHERE session_id = :sid "
            "AND status IN ('queued', 'running') LIMIT 1",
            {"sid": session_id},
        )
        return row is not None

    # ------------------------------------------------------------------ reaper
    async def stale_sessions(self, stale_s: float, limit: int) -> list[str]:
        """Sessions with a pending turn whose last kick is older than ``stale_s``."""
        async with self._autocommit() as conn:
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
    @asynccontextmanager
    async def _autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose statements commit alone: reads cost one round trip each."""
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    async def _call(self, sql: str, params: dict[str, Any]) -> Any:
        """One statement in autocommit mode on the fast pool: its first row, as a dict.

        The worker's steps are single statements (migration 0005's functions), so this
        is a whole transaction.  A stale fence (SQLSTATE TQ001) is raised as Fenced;
        other database errors as SQLAlchemy's, like every other store call.
        """
        query = _psycopg_style(sql)
        try:
            async with self._fast.connection() as conn:
                return await (await conn.execute(query, params)).fetchone()
        except PoolTimeout as exc:
            raise SQLAlchemyPoolTimeout(str(exc)) from exc
        except psycopg.Error as exc:
            if exc.sqlstate == FENCED_SQLSTATE:
                raise Fenced(str(exc).splitlines()[0]) from None
            raise DBAPIError.instance(query, params, exc, psycopg.Error) from exc

    async def _check_fence(self, conn: AsyncConnection, session_id: str, fence: int) -> None:
        row = (
            await conn.execute(
                text("SELECT fence FROM sessions WHERE id = :sid FOR UPDATE"),
                {"sid": session_id},
            )
        ).first()
        if row is None or int(row[0]) != fence:
            raise Fenced(f"session {session_id}: fence {fence} is stale")
