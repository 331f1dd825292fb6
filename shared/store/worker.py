"""What a worker's drain reads and writes: claim a turn, finish it, say it left.

    store = WorkerStore(db)
    claim = await store.claim(session_id, None, max_lost=3)      # right after taking the lock
    after, status, claim = await store.complete(turn, claim.fence, items, ...)

Each call is one statement of ``shared/sql`` (one round trip, autocommit).  Every write
checks the holder's fence under the session's row lock; a stale one raises ``Fenced``
(another worker owns the session now: I1).  Items are appended in the transaction that
finishes the turn, so a retried or redelivered turn never duplicates history (I4).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from shared.errors import Fenced
from shared.sql import render
from shared.status import ErrorCode, TurnStatus
from shared.store.db import Database
from shared.store.records import Claim, Item, TurnRecord, claim_of, estimate_tokens

_CLAIMABLE = render(
    "SELECT status IN {{in:runnable}} AS runnable FROM turns "
    "WHERE session_id = :sid AND status IN {{in:open}} ORDER BY seq LIMIT 1"
)


def _json(value: Any) -> str | None:
    return json.dumps(value, ensure_ascii=False) if value is not None else None


def _jsonb(value: Any) -> str:
    """JSON text a jsonb column accepts: NUL characters (which jsonb cannot hold) become
    U+FFFD and lone surrogates (not UTF-8) "?"; every other character is kept.  A journal
    write that Postgres refused would fail the same way on every attempt of the turn."""
    text = json.dumps(value, ensure_ascii=False)
    if "\\u0000" in text:
        text = json.dumps(nul_safe(json.loads(text)), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def nul_safe(value: Any) -> Any:
    """A JSON value Postgres can store: U+0000 (which JSONB and text columns refuse, and a
    refused write would pass for Postgres being down) becomes U+FFFD, in keys and values.
    The journal, the transcript and the turn's output use it alike, so a replayed step
    gives what an uninterrupted run stored."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [nul_safe(v) for v in value]
    if isinstance(value, dict):
        return {nul_safe(k): nul_safe(v) for k, v in value.items()}
    return value


def _items(items: Sequence[Item]) -> dict[str, Any]:
    return {
        "items": json.dumps(list(items), ensure_ascii=False),
        "tokens": [estimate_tokens(i) for i in items],
    }


class WorkerStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(self, session_id: str, fence: int | None, max_lost: int | None) -> Claim | None:
        """Claim the session's lowest open turn with its context, in one round trip.

        ``fence`` None bumps the session's fence (call it right after taking the lock:
        every older holder is invalidated), else the fence is checked (Fenced if stale).
        A running turn whose holder vanished ``max_lost`` times is failed ``worker_lost``
        (``Claim.gave_up``) instead of run again.  ``max_lost`` None claims nothing.
        None: the session is gone.
        """
        row = await self.db.call(
            "SELECT * FROM turnq_claim(:sid, :fence, :max)",
            {"sid": session_id, "fence": fence, "max": max_lost},
        )
        return claim_of(row) if row is not None else None

    async def complete(
        self,
        turn: TurnRecord,
        fence: int,
        new_items: Sequence[Item],
        output: str | None,
        usage: dict[str, Any] | None,
        context_tokens: int | None,
        max_lost: int | None,
        *,
        output_json: Any = None,
        agent: str | None = None,
        entry: str | None = None,
    ) -> tuple[int, TurnStatus, Claim]:
        """Append the turn's items and finish it, then claim the next: one fenced statement.

        A cancel request recorded meanwhile decides the outcome (``rollback`` writes no
        items, ``interrupt`` keeps them; both end ``cancelled``).  ``agent`` (who answered)
        becomes the session's active agent; ``entry`` binds a session created without an entry
        agent to the one it ran with.  Returns the session's context size after the
        turn, the turn's final status and the next claim.
        """
        row = await self.db.call(
            "SELECT * FROM turnq_complete(:sid, :fence, :tid, CAST(:items AS jsonb), :tokens, "
            ":output, CAST(:usage AS jsonb), :ctx, :max, CAST(:output_json AS jsonb), :agent, "
            ":entry)",
            {
                "sid": turn.session_id,
                "fence": fence,
                "tid": turn.id,
                **_items(new_items),
                "output": output,
                "usage": _json(usage),
                "ctx": context_tokens,
                "max": max_lost,
                "output_json": _json(output_json),
                "agent": agent,
                "entry": entry,
            },
        )
        if row is None:
            raise Fenced(f"session {turn.session_id} is gone")
        return int(row["after_tokens"]), TurnStatus(row["final_status"]), claim_of(row)

    async def fail(
        self,
        turn: TurnRecord,
        fence: int,
        code: ErrorCode,
        error: str,
        *,
        items: Sequence[Item] = (),
        usage: dict[str, Any] | None = None,
        agent: str | None = None,
        entry: str | None = None,
        max_lost: int | None,
    ) -> tuple[TurnStatus, Claim]:
        """End the running turn ``failed`` with its code (or ``cancelled``, if a cancel was
        requested meanwhile), keeping ``items`` in the transcript; claim the next."""
        row = await self.db.call(
            "SELECT * FROM turnq_fail(:sid, :fence, :tid, :code, :error, CAST(:items AS jsonb), "
            ":tokens, CAST(:usage AS jsonb), :max, :agent, :entry)",
            {
                "sid": turn.session_id,
                "fence": fence,
                "tid": turn.id,
                "code": code.value,
                "error": error,
                **_items(items),
                "usage": _json(usage),
                "max": max_lost,
                "agent": agent,
                "entry": entry,
            },
        )
        if row is None:
            raise Fenced(f"session {turn.session_id} is gone")
        return TurnStatus(row["final_status"]), claim_of(row)

    async def pause(
        self,
        turn: TurnRecord,
        fence: int,
        *,
        state: dict[str, Any],
        approvals: Sequence[dict[str, Any]],
        pending_items: Sequence[Item],
        finished_items: Sequence[Item],
        usage: dict[str, Any] | None,
        agent: str | None,
        entry: str | None,
        max_lost: int | None,
    ) -> tuple[TurnStatus, Claim]:
        """The run waits for approvals: the turn becomes ``waiting`` with its run state and
        one approval row per pending call (or ``cancelled`` if a cancel came first, keeping
        ``finished_items`` under interrupt); claims the next turn, which a waiting turn
        holds back."""
        row = await self.db.call(
            "SELECT * FROM turnq_pause(:sid, :fence, :tid, CAST(:state AS jsonb), "
            "CAST(:approvals AS jsonb), CAST(:pending AS jsonb), CAST(:items AS jsonb), "
            ":tokens, CAST(:usage AS jsonb), :agent, :entry, :max)",
            {
                "sid": turn.session_id,
                "fence": fence,
                "tid": turn.id,
                "state": _json(state),
                "approvals": _json(list(approvals)),
                "pending": _json(list(pending_items)),
                **_items(finished_items),
                "usage": _json(usage),
                "agent": agent,
                "entry": entry,
                "max": max_lost,
            },
        )
        if row is None:
            raise Fenced(f"session {turn.session_id} is gone")
        return TurnStatus(row["final_status"]), claim_of(row)

    async def journal(
        self,
        session_id: str,
        turn_id: str,
        fence: int,
        kind: str,
        key: str,
        state: str,
        payload: Any,
    ) -> None:
        """One step of the running turn (turnq_journal): Fenced if the holder is stale."""
        await self.db.call(
            "SELECT turnq_journal(:sid, :fence, :tid, :kind, :key, :state, "
            "CAST(:payload AS jsonb))",
            {"sid": session_id, "fence": fence, "tid": turn_id, "kind": kind, "key": key,
             "state": state, "payload": _jsonb(payload)},
        )  # fmt: skip

    async def left(self, session_id: str, turn_id: str, fence: int) -> None:
        """This holder stopped running the turn while alive: not a vanished execution."""
        await self.db.call(
            "SELECT turnq_left(:sid, :tid, :fence)",
            {"sid": session_id, "tid": turn_id, "fence": fence},
        )

    async def cancel_mode(self, turn_id: str) -> str | None:
        row = await self.db.call("SELECT cancel_mode FROM turns WHERE id = :id", {"id": turn_id})
        return row["cancel_mode"] if row is not None else None

    async def error_of(self, turn_id: str) -> str | None:
        """Why the turn failed, as recorded (e.g. by ``turnq_take`` for ``worker_lost``)."""
        row = await self.db.call("SELECT error FROM turns WHERE id = :id", {"id": turn_id})
        return row["error"] if row is not None else None

    async def claimable(self, session_id: str) -> bool:
        """The session's lowest open turn can run (queued, or running with no live holder);
        False when nothing is open or a paused turn holds the line."""
        row = await self.db.call(_CLAIMABLE, {"sid": session_id})
        return bool(row is not None and row["runnable"])

    async def fence_is(self, session_id: str, fence: int) -> bool:
        """The session's fence is still ``fence`` (nobody took the session over)."""
        row = await self.db.call("SELECT fence FROM sessions WHERE id = :sid", {"sid": session_id})
        return row is not None and int(row["fence"]) == fence
