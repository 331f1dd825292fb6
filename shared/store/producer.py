"""What producers (the Python client, the gateway, the CLI) read and write.

    store = ProducerStore(db)
    turn, created, stopping = await store.enqueue("alice", "support-1", "Hi", None)
    record = await store.get_turn(turn.id, "alice")

Every lookup is scoped by the deployment's namespace and by the owner: another user's
session or turn is simply not found, by the same query a missing one takes (I10).
Status changes go through the functions of ``shared/sql`` (turnq_cancel,
turnq_stop_pending); creating a turn is an INSERT (status ``queued``).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.errors import (
    AgentConflict,
    ApprovalConflict,
    ApprovalNotFound,
    ApprovalNotPending,
    IdempotencyConflict,
    InvalidInput,
    SessionBusy,
    TurnNotCancellable,
    TurnNotFound,
)
from shared.multitask import CancelMode, Multitask
from shared.sql import render
from shared.store.db import Database
from shared.store.records import TURN_COLUMNS, Item, SessionRecord, TurnRecord, session_of, turn_of

# The common enqueue (no idempotency key, strategy "enqueue") as one statement: the
# session upsert takes the session row's lock for the statement, as in the general path.
_ENQUEUE = f"""
WITH s AS (
    INSERT INTO sessions (id, namespace, user_id, key, turn_count)
    VALUES (:new_id, :ns, :user_id, :key, 1)
    ON CONFLICT (namespace, user_id, key) DO UPDATE
        SET turn_count = sessions.turn_count + 1, updated_at = now()
    RETURNING id, user_id, key, turn_count, entry_agent, active_agent
), t AS (
    INSERT INTO turns (id, session_id, seq, input, content, metadata)
    SELECT :id, s.id, s.turn_count, :input, CAST(:content AS jsonb), CAST(:metadata AS jsonb)
    FROM s
    RETURNING *
)
SELECT {TURN_COLUMNS} FROM t JOIN s ON s.id = t.session_id
"""

_UPSERT_SESSION = """
INSERT INTO sessions (id, namespace, user_id, key, turn_count, entry_agent)
VALUES (:new_id, :ns, :user_id, :key, 1, :agent)
ON CONFLICT (namespace, user_id, key) DO UPDATE
    SET turn_count = sessions.turn_count + 1, updated_at = now()
RETURNING id::text, turn_count, entry_agent, xmax = 0 AS created
"""

_BUSY = render(
    "SELECT id::text, status FROM turns WHERE session_id = :sid "
    "AND status IN {{in:open}} ORDER BY seq LIMIT 1"
)

_GET_TURN = (
    f"SELECT {TURN_COLUMNS} FROM turns t JOIN sessions s ON s.id = t.session_id "
    "WHERE t.id = :id AND s.namespace = :ns AND (CAST(:u AS text) IS NULL OR s.user_id = :u)"
)

MAX_CURSOR_CHARS = 512  # issued cursors are ~100; a forged one may be anything


def _encode_cursor(updated_at: datetime, session_id: str) -> str:
    raw = json.dumps([updated_at.isoformat(), session_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, sid = json.loads(raw)  # short, so never deep enough for a RecursionError
        return datetime.fromisoformat(stamp), str(uuid.UUID(str(sid)))
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor", "is not a cursor this API returned") from exc


def _encode_approval_cursor(stamp: datetime, turn_id: str, call_id: str) -> str:
    raw = json.dumps([stamp.isoformat(), turn_id, call_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_approval_cursor(cursor: str) -> tuple[datetime, str, str]:
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, tid, cid = json.loads(raw)
        # Postgres text holds no NUL (and no lone surrogate): refuse them here, not as a 500.
        if not isinstance(cid, str) or len(cid) > 512 or "\x00" in cid:
            raise ValueError("call id")
        cid.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
        when = datetime.fromisoformat(stamp)
        if when.tzinfo is None:
            raise ValueError("naive time")
        return when, str(uuid.UUID(str(tid))), cid
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor", "is not a cursor this API returned") from exc


class ProducerStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def enqueue(
        self,
        user_id: str,
        key: str,
        content: str,
        idempotency_key: str | None,
        multitask: Multitask = Multitask.ENQUEUE,
        *,
        parts: list[Item] | None = None,
        metadata: dict[str, Any] | None = None,
        agent: str | None = None,
        default_agent: str | None = None,
    ) -> tuple[TurnRecord, bool, list[str]]:
        """Commit a new turn (or find the one with this idempotency key).

        ``content`` is the message's text; ``parts`` its content parts, if it has them.
        ``agent`` binds a new session to that entry agent; for an existing session it must
        be the session's (its entry agent, or ``default_agent`` when it was created without
        one), else AgentConflict.  Returns (turn, created, ids of running turns asked to
        stop).  The upsert takes the session row's lock, so concurrent enqueues on one
        session serialise, sequence numbers have no gaps and no duplicates, and the
        multitask decision sees a stable set of open turns.
        """
        ids = {"new_id": str(uuid.uuid4()), "ns": self.db.namespace, "user_id": user_id}
        turn = {
            "id": str(uuid.uuid4()),
            "input": content,
            "content": json.dumps(parts, ensure_ascii=False) if parts is not None else None,
            "metadata": json.dumps(metadata, ensure_ascii=False) if metadata is not None else None,
        }
        if idempotency_key is None and multitask is Multitask.ENQUEUE and agent is None:
            row = await self.db.call(_ENQUEUE, {**ids, "key": key, **turn})
            return turn_of(row), True, []
        async with self.db.engine.begin() as conn:
            row = (
                await conn.execute(text(_UPSERT_SESSION), {**ids, "key": key, "agent": agent})
            ).one()
            session_id, seq, entry, created = row[0], row[1], row[2], row[3]
            if agent is not None and not created and (entry or default_agent) != agent:
                await conn.rollback()  # undo the turn_count bump: no gap in seq
                raise AgentConflict(key, entry or default_agent or "the default agent", agent)
            if idempotency_key is not None:
                existing = await self._by_idempotency_key(conn, session_id, idempotency_key)
                if existing is not None:
                    await conn.rollback()  # undo the turn_count bump: no gap in seq
                    if existing.message != (parts if parts is not None else content):
                        raise IdempotencyConflict(idempotency_key, existing.id)
                    return existing, False, []
            if multitask is Multitask.REJECT:
                busy = (await conn.execute(text(_BUSY), {"sid": session_id})).first()
                if busy is not None:
                    await conn.rollback()
                    raise SessionBusy(busy[0], busy[1])
            stopping: list[str] = []
            if multitask in (Multitask.INTERRUPT, Multitask.ROLLBACK):
                result = await conn.execute(
                    text("SELECT * FROM turnq_stop_pending(:sid, :seq, :mode)"),
                    {"sid": session_id, "seq": seq, "mode": multitask.value},
                )
                stopping = [r[0] for r in result.all()]
            inserted = (
                await conn.execute(
                    text(
                        "WITH t AS (INSERT INTO turns (id, session_id, seq, input, content, "
                        "metadata, idempotency_key) VALUES (:id, :sid, :seq, :input, "
                        "CAST(:content AS jsonb), CAST(:metadata AS jsonb), :k) RETURNING *) "
                        f"SELECT {TURN_COLUMNS} FROM t JOIN sessions s ON s.id = t.session_id"
                    ),
                    {**turn, "sid": session_id, "seq": seq, "k": idempotency_key},
                )
            ).one()
            return turn_of(inserted), True, stopping

    async def _by_idempotency_key(
        self, conn: AsyncConnection, session_id: str, key: str
    ) -> TurnRecord | None:
        row = (
            await conn.execute(
                text(
                    f"SELECT {TURN_COLUMNS} FROM turns t JOIN sessions s ON s.id = t.session_id "
                    "WHERE t.session_id = :sid AND t.idempotency_key = :k"
                ),
                {"sid": session_id, "k": key},
            )
        ).first()
        return turn_of(row) if row is not None else None

    async def get_turn(self, turn_id: str, user_id: str | None = None) -> TurnRecord | None:
        # Another user's turn is filtered in the same query, so it costs what a missing one does.
        row = await self.db.call(_GET_TURN, {"id": turn_id, "u": user_id, "ns": self.db.namespace})
        return turn_of(row) if row is not None else None

    async def get_session(self, user_id: str, key: str) -> SessionRecord | None:
        async with self.db.autocommit() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT * FROM sessions WHERE namespace = :ns AND user_id = :u AND key = :k"
                    ),
                    {"ns": self.db.namespace, "u": user_id, "k": key},
                )
            ).first()
        return session_of(row) if row is not None else None

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
        async with self.db.autocommit() as conn:
            rows = (await conn.execute(text(sql), params)).all()
        return [(r[0], r[1], r[2]) for r in rows]

    async def turns_of(self, session_id: str) -> list[TurnRecord]:
        async with self.db.autocommit() as conn:
            rows = (
                await conn.execute(
                    text(
                        f"SELECT {TURN_COLUMNS} FROM turns t JOIN sessions s "
                        "ON s.id = t.session_id WHERE t.session_id = :sid ORDER BY t.seq"
                    ),
                    {"sid": session_id},
                )
            ).all()
        return [turn_of(r) for r in rows]

    async def list_sessions(
        self, user_id: str, limit: int, cursor: str | None
    ) -> tuple[list[SessionRecord], str | None]:
        params: dict[str, object] = {"u": user_id, "ns": self.db.namespace, "limit": limit + 1}
        where = "namespace = :ns AND user_id = :u"
        if cursor:
            stamp, sid = _decode_cursor(cursor)
            where += " AND (updated_at, id) < (:stamp, CAST(:sid AS uuid))"
            params.update(stamp=stamp, sid=sid)
        async with self.db.autocommit() as conn:
            rows = (
                await conn.execute(
                    text(
                        f"SELECT * FROM sessions WHERE {where} "
                        "ORDER BY updated_at DESC, id DESC LIMIT :limit"
                    ),
                    params,
                )
            ).all()
        records = [session_of(r) for r in rows[:limit]]
        more = len(rows) > limit
        return records, (
            _encode_cursor(records[-1].updated_at, records[-1].id) if more and records else None
        )

    async def usage_of(self, user_id: str) -> dict[str, int]:
        """A user's model usage: the sum over their sessions (each turn's commit adds its
        own to its session; no per-user row that every turn would contend for)."""
        keys = ("requests", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")
        async with self.db.autocommit() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT count(*) AS sessions, "
                        + ", ".join(f"COALESCE(sum({k}), 0)::bigint AS {k}" for k in keys)
                        + " FROM sessions WHERE namespace = :ns AND user_id = :u"
                    ),
                    {"ns": self.db.namespace, "u": user_id},
                )
            ).one()
        return {k: int(v) for k, v in row._mapping.items()}

    async def decide(
        self,
        turn_id: str,
        decisions: Sequence[tuple[str, bool, str | None]],
        by: str,
        owner: str | None,
    ) -> tuple[TurnRecord, list[dict[str, Any]], bool]:
        """Record decisions (call id, approve, message) on a waiting turn's tool calls, all
        or none, in one transaction (turnq_decide: each exactly once).  ``owner`` None: an
        approver key.  Returns the turn, each call's recorded decision and outcome
        (``recorded`` or ``same``), and whether the turn was queued again (kick it)."""
        results: list[dict[str, Any]] = []
        resumed = False
        turn: TurnRecord | None = None
        async with self.db.engine.begin() as conn:
            for call_id, approve, message in decisions:
                row = (
                    await conn.execute(
                        text("SELECT * FROM turnq_decide(:t, :c, :a, :m, :by, :owner, :ns)"),
                        {"t": turn_id, "c": call_id, "a": approve, "m": message, "by": by,
                         "owner": owner, "ns": self.db.namespace},
                    )
                ).first()  # fmt: skip
                if row is None:
                    raise TurnNotFound(turn_id)
                outcome = row._mapping["outcome"]
                turn = turn_of(row._mapping["turn"])
                wanted = "approved" if approve else "rejected"
                if outcome == "unknown_call":
                    raise ApprovalNotFound(turn_id, call_id)
                if outcome == "conflict":
                    other = "rejected" if approve else "approved"
                    raise ApprovalConflict(turn_id, call_id, other)
                if outcome == "not_pending":
                    raise ApprovalNotPending(turn_id, call_id, turn.status.value)
                resumed = resumed or bool(row._mapping["resumed"])
                results.append(
                    {"call_id": call_id, "decision": wanted, "outcome": outcome,
                     "waited_s": row._mapping["waited_s"]}
                )  # fmt: skip
        assert turn is not None
        return turn, results, resumed

    async def approvals(
        self, owner: str | None, pending_only: bool, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Approvals, oldest request first: the owner's (``owner``), or every user's of the
        namespace (``owner`` None: an approver key).  Each with its session, tool,
        arguments, the turn's message (what the user asked) and the decision, if any."""
        where = ["a.namespace = :ns"]
        params: dict[str, Any] = {"ns": self.db.namespace, "limit": limit + 1}
        if owner is not None:
            where.append("a.user_id = :owner")
            params["owner"] = owner
        if pending_only:
            where.append("a.decision IS NULL")
        if cursor:
            stamp, turn_id, call_id = _decode_approval_cursor(cursor)
            where.append(
                "(a.requested_at, a.turn_id, a.call_id) > (:stamp, CAST(:tid AS uuid), :cid)"
            )
            params.update(stamp=stamp, tid=turn_id, cid=call_id)
        sql = (
            "SELECT a.turn_id::text AS turn_id, a.call_id, a.user_id, s.key AS session_id, "
            "a.tool, a.arguments, a.agent, a.requested_at, a.decision, a.message, "
            "a.decided_by, a.decided_at, t.input AS message_text, t.status AS turn_status "
            "FROM approvals a JOIN turns t ON t.id = a.turn_id "
            "JOIN sessions s ON s.id = a.session_id "
            f"WHERE {' AND '.join(where)} "
            "ORDER BY a.requested_at, a.turn_id, a.call_id LIMIT :limit"
        )
        async with self.db.autocommit() as conn:
            rows = [dict(r._mapping) for r in (await conn.execute(text(sql), params)).all()]
        page = rows[:limit]
        more = len(rows) > limit and page
        nxt = (
            _encode_approval_cursor(
                page[-1]["requested_at"], page[-1]["turn_id"], page[-1]["call_id"]
            )
            if more
            else None
        )
        return page, nxt

    async def delete_session(self, session_id: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(text("DELETE FROM sessions WHERE id = :sid"), {"sid": session_id})

    async def cancel_turn(
        self, turn_id: str, user_id: str, mode: CancelMode
    ) -> tuple[TurnRecord, bool, bool]:
        """Returns the turn, whether its running worker must be told to stop, and whether
        this call itself cancelled it (a queued or waiting turn)."""
        row = await self.db.call(
            "SELECT * FROM turnq_cancel(:id, :u, :ns, :mode)",
            {"id": turn_id, "u": user_id, "ns": self.db.namespace, "mode": mode.value},
        )
        if row is None:
            raise TurnNotFound(turn_id)
        turn = turn_of(row["turn"])
        if row["outcome"] in ("finished", "lost_race"):
            raise TurnNotCancellable(turn_id, turn.status.value)
        return turn, row["outcome"] == "requested", row["outcome"] == "cancelled"
