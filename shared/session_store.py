"""Session-level operations for the API: list, delete, cancel a turn.

    sessions, cursor = await SessionStore(engine).list_sessions("alice", limit=20)
    record, signal, now = await SessionStore(engine).cancel_turn(tid, "alice", CancelMode.ROLLBACK)

Every query is scoped by the owner: another user's session or turn is simply not found.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.errors import InvalidInput, TurnNotCancellable, TurnNotFound
from shared.multitask import CancelMode
from shared.store import _TURN_COLUMNS, SessionRecord, TurnRecord, _session, _turn


def _encode_cursor(updated_at: datetime, session_id: str) -> str:
    raw = json.dumps([updated_at.isoformat(), session_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


MAX_CURSOR_CHARS = 512  # issued cursors are ~100; a forged one may be anything


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, sid = json.loads(raw)  # short, so never deep enough for a RecursionError
        return datetime.fromisoformat(stamp), str(uuid.UUID(str(sid)))
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor", "is not a cursor this API returned") from exc


class SessionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def list_sessions(
        self, user_id: str, limit: int, cursor: str | None
    ) -> tuple[list[SessionRecord], str | None]:
        params: dict[str, object] = {"u": user_id, "limit": limit + 1}
        where = "user_id = :u"
        if cursor:
            stamp, sid = _decode_cursor(cursor)
            where += " AND (updated_at, id) < (:stamp, CAST(:sid AS uuid))"
            params.update(stamp=stamp, sid=sid)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        f"SELECT * FROM sessions WHERE {where} "
                        "ORDER BY updated_at DESC, id DESC LIMIT :limit"
                    ),
                    params,
                )
            ).all()
        records = [_session(r) for r in rows[:limit]]
        more = len(rows) > limit
        return records, (
            _encode_cursor(records[-1].updated_at, records[-1].id) if more and records else None
        )

    async def delete_session(self, session_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(text("DELETE FROM sessions WHERE id = :sid"), {"sid": session_id})

    async def cancel_turn(
        self, turn_id: str, user_id: str, mode: CancelMode
    ) -> tuple[TurnRecord, bool, bool]:
        """Returns the turn, whether a running worker must be told to stop, and whether
        this call itself cancelled it (a queued turn)."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        f"SELECT {_TURN_COLUMNS} FROM turns t JOIN sessions s "
                        "ON s.id = t.session_id WHERE t.id = :id AND s.user_id = :u "
                        "FOR UPDATE OF t"
                    ),
                    {"id": turn_id, "u": user_id},
                )
            ).first()
            if row is None:
                raise TurnNotFound(turn_id)
            turn = _turn(row)
            status = turn.status.value
            if status == "cancelled":
                return turn, False, False
            if status in ("succeeded", "failed"):
                raise TurnNotCancellable(turn_id, status)
            if status == "queued":
                sql = (
                    "UPDATE turns t SET status = 'cancelled', finished_at = now(), "
                    "error = 'cancelled before it started', cancel_mode = :mode, "
                    "cancel_requested_at = now() FROM sessions s "
                    f"WHERE t.id = :id AND s.id = t.session_id RETURNING {_TURN_COLUMNS}"
                )
                signal = False
            else:
                sql = (
                    "UPDATE turns t SET cancel_mode = COALESCE(t.cancel_mode, :mode), "
                    "cancel_requested_at = COALESCE(t.cancel_requested_at, now()) "
                    f"FROM sessions s WHERE t.id = :id AND s.id = t.session_id "
                    f"RETURNING {_TURN_COLUMNS}"
                )
                signal = True
            updated = (await conn.execute(text(sql), {"id": turn_id, "mode": mode.value})).one()
        return _turn(updated), signal, not signal
