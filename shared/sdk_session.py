"""The Agents SDK ``Session`` protocol on turnq's own tables.

    from agents import Agent, Runner
    from shared.sdk_session import TurnqSession

    async with TurnqSession("support-1", "alice") as session:   # URL from TURNQ_DATABASE_URL
        await Runner.run(agent, "What is the weather in Austin?", session=session)
        await Runner.run(agent, "And in Paris?", session=session)   # sees the first run

A script or notebook and the workers then share one history: items written here
are what ``producer.Client.history()`` returns and what the next queued turn sees,
and ``get_items`` returns exactly the model's view a worker builds, the summary
(as a leading system message) plus the items from the compaction mark on.
Session keys are scoped to their user as everywhere in turnq (I10): the
``(user_id, session_id)`` pair names one ``sessions`` row, created on first write.

Decisions (what a reader of this module needs to know):

* **Writes next to a draining worker.** This class is a plain appender, not a
  turn runner: it never bumps or checks ``sessions.fence``.  The fence settles
  worker against worker (a stale lock holder); a notebook bumping it would fail
  a healthy worker's commit and force a second model call, and checking it would
  make notebook writes fail at random.  Nothing can collide either: every write
  here and every worker commit locks the session row and takes its positions
  from ``item_count`` under that lock, so each ``add_items`` call and each
  worker turn lands as one contiguous block, and the SDK writes a
  ``function_call`` together with its output in one call, so neither writer
  splits the other's tool pairs.  What is *not* promised is ordering between a
  ``Runner.run`` here and queued turns of the same session: their blocks
  interleave, exactly as two SDK runs on one session do.  To get I1/I2 for a
  session, send its turns through the producer instead.
* **Positions are never reused.** ``item_count`` is the next free position
  (``shared.schema``); ``pop_item`` and ``clear_session`` delete rows but never
  move it back.  A reused position would let a reader paging with
  ``Store.history(after=...)`` skip the replacement, and would let a summarizer
  that snapshotted the old items commit its compare-and-swap on the compaction
  mark as if nothing had happened (ABA).  Gaps in positions are therefore normal.
* **``clear_session`` drops the transcript**, not only the model's view: the
  SDK's contract is "clear all items".  It deletes every item of the session
  (also those written by workers), drops the summary, zeroes the token counts
  and moves ``compaction_mark`` to ``item_count``, so a summarizer in flight
  that compares-and-swaps on the old mark finds it changed and commits nothing.
  The session row and its turns stay: turns are the record of accepted work (I3).
  ``item_count`` is deliberately not set back to 0 (see the previous point).
* **``pop_item`` pops only from the model's view** (positions from the
  compaction mark on).  Items a summary already covers stay, since popping one
  would not take it out of the summary (I9); with an empty tail it returns None
  even though ``get_items`` still returns the summary message.
* Items written here carry ``turn_id`` NULL and a token estimate
  (``shared.store.estimate_tokens``) that is added to ``transcript_tokens`` and
  to ``context_tokens`` (new text is estimated until the next model call
  measures it).  Postgres ``jsonb`` cannot hold a NUL character or a lone
  surrogate: such an item raises ``InvalidInput`` and nothing of the call is
  written.
* An engine made from a URL uses ``NullPool``: a pooled async connection is bound
  to the event loop that opened it, and notebooks and scripts that call
  ``asyncio.run`` more than once would otherwise fail with "attached to a
  different loop".  Pass ``engine=`` to share a pooled engine on one loop.
"""

from __future__ import annotations

import json
import uuid
from types import TracebackType
from typing import Any, cast

from agents import SessionSettings, TResponseInputItem
from agents.memory.session_settings import coerce_session_settings, resolve_session_limit
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from shared.errors import InvalidInput
from shared.settings import Settings, get_settings
from shared.store import estimate_tokens
from shared.validation import check_id

SUMMARY_PREFIX = "Summary of the earlier conversation:\n"

# Postgres: "unsupported Unicode escape sequence" (\u0000 in jsonb) and invalid UTF-8.
_UNSTORABLE_SQLSTATES = frozenset({"22P05", "22021"})


def summary_item(summary: str) -> TResponseInputItem:
    """The message that stands for everything before the compaction mark."""
    return cast(TResponseInputItem, {"role": "system", "content": SUMMARY_PREFIX + summary})


class TurnqSession:
    """``agents.memory.Session`` backed by turnq's ``sessions`` and ``items`` tables."""

    session_settings: SessionSettings | None = None

    def __init__(
        self,
        session_id: str,
        user_id: str,
        *,
        engine: AsyncEngine | None = None,
        database_url: str | None = None,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        namespace: str | None = None,
    ) -> None:
        if engine is not None and database_url is not None:
            raise ValueError("pass engine or database_url, not both")
        max_id = get_settings().max_id_length
        self.session_id = check_id("session_id", session_id, max_id)
        self.user_id = check_id("user_id", user_id, max_id)
        self.namespace = get_settings().namespace if namespace is None else namespace
        self.session_settings = (
            coerce_session_settings(session_settings)
            if session_settings is not None
            else SessionSettings()
        )
        self._owns_engine = engine is None
        if engine is None:
            url = (
                Settings(database_url=database_url).require_database_url()
                if database_url is not None
                else get_settings().require_database_url()
            )
            engine = create_async_engine(url, poolclass=NullPool)
        self.engine = engine

    async def close(self) -> None:
        """Dispose of the engine if this session created it (a passed-in engine is the caller's)."""
        if self._owns_engine:
            await self.engine.dispose()

    async def __aenter__(self) -> TurnqSession:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"TurnqSession(session_id={self.session_id!r}, user_id={self.user_id!r})"

    # ------------------------------------------------------------------ Session protocol
    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The model's view, oldest first: [summary] + items from the compaction mark on.

        ``limit`` keeps the latest N entries of that view (the summary counts as the
        oldest one); 0 gives nothing and a negative limit everything, as in SQLiteSession.
        One statement, so the summary, the mark and the items come from one snapshot.
        """
        n = resolve_session_limit(limit, self.session_settings)
        if n is not None and n < 0:
            n = None
        if n == 0:
            return []
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        """
                SELECT s.summary, i.item, s.summary_items FROM sessions s
                LEFT JOIN LATERAL (
                    SELECT position, item FROM items
                    WHERE session_id = s.id AND position >= s.compaction_mark
                    ORDER BY position DESC LIMIT :n
                ) i ON true
                WHERE s.namespace = :ns AND s.user_id = :u AND s.key = :k
                ORDER BY i.position
                """
                    ),
                    {"ns": self.namespace, "u": self.user_id, "k": self.session_id, "n": n},
                )
            ).all()
        if not rows:
            return []
        summary: str | None = rows[0][0]
        kept = [cast(TResponseInputItem, i) for i in rows[0][2] or []]
        tail = [cast(TResponseInputItem, r[1]) for r in rows if r[1] is not None]
        head = [summary_item(summary)] if summary else []
        view = [*head, *kept, *tail]  # what workers send: summary, kept tool items, the rest
        return view if n is None else view[-n:]

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append ``items`` as one block in one transaction that holds the session row lock."""
        if not items:
            return
        encoded = [_encode(i, item) for i, item in enumerate(items)]
        tokens = [estimate_tokens(item) for item in items]
        try:
            async with self.engine.begin() as conn:
                row = (
                    await conn.execute(
                        text(
                            """
                    INSERT INTO sessions (id, namespace, user_id, key, item_count,
                                          transcript_tokens, context_tokens)
                    VALUES (:new_id, :ns, :u, :k, :n, :tokens, :tokens)
                    ON CONFLICT (namespace, user_id, key) DO UPDATE SET
                        item_count = sessions.item_count + EXCLUDED.item_count,
                        transcript_tokens = sessions.transcript_tokens
                                            + EXCLUDED.transcript_tokens,
                        context_tokens = sessions.context_tokens + EXCLUDED.context_tokens,
                        updated_at = now()
                    RETURNING id::text, item_count
                    """
                        ),
                        {
                            "new_id": str(uuid.uuid4()),
                            "ns": self.namespace,
                            "u": self.user_id,
                            "k": self.session_id,
                            "n": len(items),
                            "tokens": sum(tokens),
                        },
                    )
                ).one()
                sid, first = row[0], int(row[1]) - len(items)
                await conn.execute(
                    text(
                        "INSERT INTO items (session_id, position, turn_id, item, tokens) "
                        "VALUES (:sid, :pos, NULL, CAST(:item AS jsonb), :tokens)"
                    ),
                    [
                        {"sid": sid, "pos": first + i, "item": encoded[i], "tokens": tokens[i]}
                        for i in range(len(items))
                    ],
                )
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) in _UNSTORABLE_SQLSTATES:
                raise InvalidInput(
                    "items", "contain text Postgres jsonb cannot store (a NUL character)"
                ) from exc
            raise

    async def pop_item(self) -> TResponseInputItem | None:
        """Delete and return the newest item of the model's view (None if there is none)."""
        async with self.engine.begin() as conn:
            srow = (
                await conn.execute(
                    text(
                        "SELECT id::text, compaction_mark FROM sessions "
                        "WHERE namespace = :ns AND user_id = :u AND key = :k FOR UPDATE"
                    ),
                    {"ns": self.namespace, "u": self.user_id, "k": self.session_id},
                )
            ).first()
            if srow is None:
                return None
            # A new statement after the lock: its snapshot sees every write committed before.
            row = (
                await conn.execute(
                    text(
                        """
                DELETE FROM items WHERE session_id = :sid AND position = (
                    SELECT max(position) FROM items WHERE session_id = :sid
                ) AND position >= :mark
                RETURNING item, tokens
                """
                    ),
                    {"sid": srow[0], "mark": srow[1]},
                )
            ).first()
            if row is None:
                return None
            await conn.execute(
                text(
                    """
                UPDATE sessions SET updated_at = now(),
                    transcript_tokens = GREATEST(0, transcript_tokens - :t),
                    context_tokens = GREATEST(0, context_tokens - :t)
                WHERE id = :sid
                """
                ),
                {"sid": srow[0], "t": row[1]},
            )
        return cast(TResponseInputItem, row[0])

    async def clear_session(self) -> None:
        """Delete the session's items (the transcript too) and its summary; keep row and turns."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        """
                UPDATE sessions SET compaction_mark = item_count, summary = NULL,
                    summary_items = '[]'::jsonb,
                    summary_tokens = 0, transcript_tokens = 0, context_tokens = 0,
                    updated_at = now()
                WHERE namespace = :ns AND user_id = :u AND key = :k
                RETURNING id::text
                """
                    ),
                    {"ns": self.namespace, "u": self.user_id, "k": self.session_id},
                )
            ).first()
            if row is not None:
                await conn.execute(
                    text("DELETE FROM items WHERE session_id = :sid"), {"sid": row[0]}
                )


def _encode(index: int, item: object) -> str:
    try:
        raw = json.dumps(item, ensure_ascii=False, default=_model_dump)
        raw.encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise InvalidInput(
            "items", f"item {index} is not storable JSON ({type(exc).__name__}: {exc})"
        ) from exc
    return raw


def _model_dump(obj: object) -> object:
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude_unset=True)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
