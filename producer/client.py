"""Python client: enqueue turns, wait for them, read transcripts.

    client = Client.from_settings()                 # or: async with AsyncClient.from_settings()
    turn = client.enqueue(session_id, user_id, content, idempotency_key=None)
    done = client.wait(turn.id, timeout=60)         # status, output, error, usage
    items = client.history(session_id, user_id)     # the transcript, oldest first

A turn is *accepted* once it is committed to Postgres; only then is the kick sent
to Redis.  A kick that cannot be sent is logged and left to the beat reaper, so
an accepted turn is never lost (I3).  Kicks carry the internal session id only,
never content (I10).  Session ids are scoped to their user: another user's
session is indistinguishable from one that does not exist.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from celery import Celery
from redis.exceptions import RedisError

from producer.streams import StreamHub
from shared import keys, metrics
from shared.celery_app import make_celery
from shared.compaction.store import CompactionStore
from shared.errors import InvalidInput, SessionNotFound, TurnNotFound, WaitTimeout
from shared.kick import send_kick
from shared.loop import LoopThread
from shared.multitask import check_cancel_mode, check_multitask
from shared.registry import Registry, registry_for
from shared.settings import Settings, get_settings
from shared.status import TERMINAL, ErrorCode, TurnStatus
from shared.store import Database, Item, ProducerStore, SessionRecord, TurnRecord
from shared.validation import (
    check_agent_name,
    check_decisions,
    check_event_id,
    check_id,
    check_message,
    check_metadata,
    check_optional_key,
    check_turn_id,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Turn:
    """An accepted turn: committed to Postgres, kick sent."""

    id: str
    session_id: str
    seq: int
    status: TurnStatus
    created: bool  # False when an idempotency key returned an earlier turn


@dataclass(frozen=True)
class Decided:
    """Decisions recorded on a waiting turn's tool calls."""

    turn: TurnResult
    decisions: list[str]  # approved / rejected, one per call decided
    resumed: bool  # nothing left pending: the turn was queued again


@dataclass(frozen=True)
class TurnResult:
    id: str
    session_id: str
    seq: int
    status: TurnStatus
    input: str  # the message's text (content parts: their text and placeholders)
    output: str | None
    error: str | None
    error_code: ErrorCode | None  # why it failed (shared.status.ErrorCode); None otherwise
    usage: dict[str, Any] | None
    attempts: int
    context_tokens: int | None
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    agent: str | None = None  # the agent that answered
    output_json: Any = None  # the structured final output of an agent with output_type
    content: list[dict[str, Any]] | None = None  # the message's content parts, if any
    metadata: dict[str, Any] | None = None  # what the caller gave at enqueue
    pending_items: list[dict[str, Any]] | None = None  # waiting: its work so far, calls marked

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def queue_wait_s(self) -> float | None:
        return (self.started_at - self.queued_at).total_seconds() if self.started_at else None

    @property
    def run_s(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

    @classmethod
    def of(cls, t: TurnRecord) -> TurnResult:
        return cls(
            id=t.id,
            session_id=t.session_key,
            seq=t.seq,
            status=t.status,
            input=t.input,
            output=t.output,
            error=t.error,
            error_code=t.error_code,
            usage=t.usage,
            attempts=t.attempts,
            context_tokens=t.context_tokens,
            queued_at=t.queued_at,
            started_at=t.started_at,
            finished_at=t.finished_at,
            agent=t.agent,
            output_json=t.output_json,
            content=t.content,
            metadata=t.metadata,
            pending_items=t.pending_items if t.status is TurnStatus.WAITING else None,
        )


_TERMINAL = {s.value for s in TERMINAL}
QUIET_S = 1.0  # a reader with no event this long checks Postgres


def _terminal_event(event: dict[str, str], also: frozenset[str] = frozenset()) -> bool:
    """A status event that ends the turn (the hub hands entries over decoded)."""
    return event.get("type") == "status" and event.get("status") in _TERMINAL | also


class AsyncClient:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        redis: aioredis.Redis,
        celery: Celery,
        broker: aioredis.Redis | None = None,
    ):
        self.settings = settings
        self.db = db
        self.store = ProducerStore(db)
        self.redis = redis  # state: event streams, the cancel channel
        self.broker = broker or redis  # kicks go onto Celery's queues here
        self.celery = celery
        self.hub = StreamHub(redis, settings.namespace, settings.stream_read_gather_ms)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> AsyncClient:
        """Kicks get a pool of their own, on the broker (the state server unless
        ``TURNQ_BROKER_URL`` says otherwise); readers share the hub's one connection."""
        s = settings or get_settings()
        redis = aioredis.Redis.from_url(
            s.require_redis_url(), socket_timeout=10, max_connections=s.client_redis_connections
        )
        broker = aioredis.Redis.from_url(s.require_broker_url(), socket_timeout=10)
        return cls(
            s,
            Database.connect(
                s.require_database_url(), s.db_pool_size, s.db_pool_timeout_s, s.namespace
            ),
            redis,
            make_celery(s),
            broker,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.hub.aclose()
        await self.db.close()
        await self.redis.aclose()
        if self.broker is not self.redis:
            await self.broker.aclose()

    # ------------------------------------------------------------------ writes
    async def enqueue(
        self,
        session_id: str,
        user_id: str,
        content: str | list[dict[str, Any]],
        idempotency_key: str | None = None,
        multitask_strategy: str = "enqueue",
        *,
        agent: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Turn:
        """Accept a turn; ``multitask_strategy`` says what to do if the session is busy
        (enqueue, reject, interrupt, rollback: see ``shared.multitask``).

        ``content`` is a string or a list of Responses-API content parts (``input_text``,
        ``input_image``, ``input_file``).  ``agent`` names the session's entry agent when it
        is created (later turns may repeat it; another one is AgentConflict).  ``metadata``
        (a JSON object) reaches the tools in the run context.
        """
        s = self.settings
        check_id("session_id", session_id, s.max_id_length)
        check_id("user_id", user_id, s.max_id_length)
        text, parts = check_message(content, s.max_content_bytes, s.max_attachment_bytes)
        check_optional_key("idempotency_key", idempotency_key, s.max_id_length)
        strategy = check_multitask(multitask_strategy)
        checked_metadata = check_metadata(metadata, s.max_metadata_bytes)
        default_agent = None
        if check_agent_name(agent, s.max_id_length) is not None:
            registry = self.registry()
            registry.check(agent)
            default_agent = registry.default
        record, created, stopping = await self.store.enqueue(
            user_id, session_id, text, idempotency_key, strategy,
            parts=parts, metadata=checked_metadata, agent=agent, default_agent=default_agent,
        )  # fmt: skip
        for running in stopping:
            await self._signal_cancel(running)
        if created or not record.terminal:
            await self._kick(record.session_id)
        return Turn(record.id, session_id, record.seq, record.status, created)

    def registry(self) -> Registry:
        """The deployment's agents (imports ``TURNQ_AGENT`` on first use)."""
        return registry_for(self.settings.agent, self.settings.context_factory)

    async def agents(self) -> list[dict[str, Any]]:
        """The deployment's agents: names, handoffs, tools (and which need approval)."""
        return await asyncio.to_thread(lambda: self.registry().describe())

    async def usage(self, user_id: str) -> dict[str, int]:
        """The user's model usage over all their sessions (requests and tokens)."""
        check_id("user_id", user_id, self.settings.max_id_length)
        return await self.store.usage_of(user_id)

    async def cancel(self, turn_id: str, user_id: str, mode: str = "interrupt") -> TurnResult:
        """Cancel a turn: a queued one at once, a running one at its next safe point."""
        tid = check_turn_id(turn_id)
        check_id("user_id", user_id, self.settings.max_id_length)
        record, signal, cancelled_now = await self.store.cancel_turn(
            tid, user_id, check_cancel_mode(mode)
        )
        if signal:
            await self._signal_cancel(record.id)
        elif cancelled_now:
            await self._announce(record.id, "cancelled")
            # A waiting turn held the session's line: the turns queued behind it can run
            # now, and nobody else would kick them (their own kicks found it waiting).
            await self._kick(record.session_id)
        return TurnResult.of(record)

    async def _signal_cancel(self, turn_id: str) -> None:
        """Wake the worker running the turn; Postgres holds the request if this is lost."""
        try:
            await self.redis.publish(keys.cancel_channel(self.settings.namespace), turn_id)
        except (RedisError, OSError):
            log.warning("cancel signal not sent; the worker sees it at commit", exc_info=True)

    async def _announce(self, turn_id: str, status: str) -> None:
        await self._publish(turn_id, {"type": "status", "status": status})

    async def _publish(self, turn_id: str, *events: dict[str, str]) -> None:
        try:
            key = keys.events_key(turn_id, self.settings.namespace)
            for event in events:
                await self.redis.xadd(key, event)  # type: ignore[arg-type]
            await self.redis.expire(key, self.settings.events_ttl_s)
        except (RedisError, OSError):
            pass  # waiters also poll Postgres

    async def _kick(self, internal_session_id: str) -> None:
        try:
            await send_kick(self.broker, self.celery, keys.DRAIN_TASK, internal_session_id)
        except Exception:  # the turn is committed: the reaper will kick it
            log.warning("kick not sent; the reaper will pick the turn up", exc_info=True)

    # ------------------------------------------------------------------ reads
    async def get_turn(self, turn_id: str, user_id: str | None = None) -> TurnResult:
        tid = check_turn_id(turn_id)
        if user_id is not None:
            check_id("user_id", user_id, self.settings.max_id_length)
        record = await self.store.get_turn(tid, user_id)
        if record is None:
            raise TurnNotFound(turn_id)
        return TurnResult.of(record)

    async def wait(
        self,
        turn_id: str,
        timeout: float = 60.0,  # noqa: ASYNC109 - the documented client API takes a timeout
        user_id: str | None = None,
        *,
        until_paused: bool = False,
    ) -> TurnResult:
        """Block until the turn is terminal; woken by the worker's event, checked in Postgres.
        ``until_paused``: also return when it waits for approvals (``waiting``; decide, then
        wait again).

        Postgres is read first, then whenever a terminal status event arrives or the
        stream has been quiet for a second (a lost event never loses the answer).
        """
        deadline = time.monotonic() + timeout
        key = keys.events_key(check_turn_id(turn_id), self.settings.namespace)
        also = frozenset({TurnStatus.WAITING.value}) if until_paused else frozenset()
        result = await self.get_turn(turn_id, user_id)
        if result.terminal or result.status.value in also:
            return result
        async with self.hub.subscribe(key, "0-0") as sub:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(
                        f"turn {turn_id} still {result.status.value} after {timeout}s"
                    )
                entries = await sub.get(min(remaining, QUIET_S))
                if entries and not any(_terminal_event(f, also) for _id, f in entries):
                    continue
                result = await self.get_turn(turn_id, user_id)  # quiet, or the end announced
                if result.terminal or result.status.value in also:
                    return result

    async def session(self, session_id: str, user_id: str) -> SessionRecord:
        check_id("session_id", session_id, self.settings.max_id_length)
        check_id("user_id", user_id, self.settings.max_id_length)
        record = await self.store.get_session(user_id, session_id)
        if record is None:
            raise SessionNotFound(session_id)
        return record

    async def history(self, session_id: str, user_id: str) -> list[Item]:
        """The transcript, oldest first; a turn waiting for approvals adds what it did so far
        at the end (not yet in the session's items), its pending calls marked
        ``"approval": "pending"``."""
        record = await self.session(session_id, user_id)
        items = [item for _, _, item in await self.store.history(record.id)]
        if record.turn_count > 0:
            waiting = [t for t in await self.store.turns_of(record.id) if t.pending_items]
            for turn in waiting:
                if turn.status is TurnStatus.WAITING:
                    items.extend(turn.pending_items or [])
        return items

    # ------------------------------------------------------------------ approvals
    async def approve(
        self, turn_id: str, user_id: str, call_id: str, message: str | None = None
    ) -> Decided:
        """Approve a tool call a waiting turn asked about (the session's owner)."""
        return await self.decide(turn_id, user_id, [(call_id, True, message)])

    async def reject(
        self, turn_id: str, user_id: str, call_id: str, message: str | None = None
    ) -> Decided:
        """Reject it; the model sees ``message`` as the call's output and answers."""
        return await self.decide(turn_id, user_id, [(call_id, False, message)])

    async def decide(
        self,
        turn_id: str,
        user_id: str,
        decisions: list[tuple[str, bool, str | None]],
        *,
        approver: bool = False,
    ) -> Decided:
        """Record decisions (call id, approve, message), all or none.  Each is recorded
        exactly once: the same decision again is idempotent, the other one is
        ApprovalConflict.  ``approver``: the caller holds an approver key and may decide
        any user's approvals (``user_id`` is who decided); otherwise only the session's
        owner finds the turn.  When no call is left pending the turn is queued again and
        any worker resumes it."""
        tid = check_turn_id(turn_id)
        check_id("user_id", user_id, self.settings.max_id_length)
        checked = check_decisions(decisions)
        owner = None if approver else user_id
        turn, results, resumed = await self.store.decide(tid, checked, user_id, owner)
        recorded = [r for r in results if r["outcome"] == "recorded"]
        for r in recorded:
            metrics.APPROVALS_DECIDED.labels(decision=r["decision"]).inc()
            if r["waited_s"] is not None:
                metrics.APPROVAL_DECISION_SECONDS.observe(max(0.0, float(r["waited_s"])))
        if recorded:
            await self._publish(
                tid, *({"type": "approval_decided", "call_id": r["call_id"],
                        "decision": r["decision"]} for r in recorded),
            )  # fmt: skip
        if resumed:
            await self._kick(turn.session_id)
        return Decided(TurnResult.of(turn), [r["decision"] for r in results], resumed)

    async def approvals(
        self,
        user_id: str,
        *,
        pending_only: bool = True,
        approver: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Approvals, oldest first: the user's own, or every user's of the deployment for an
        approver key; with the tool, its arguments, and what the user asked."""
        check_id("user_id", user_id, self.settings.max_id_length)
        if not 1 <= limit <= 200:
            raise InvalidInput("limit", "must be between 1 and 200")
        owner = None if approver else user_id
        return await self.store.approvals(owner, pending_only, limit, cursor)

    async def list_sessions(
        self, user_id: str, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[SessionRecord], str | None]:
        """The user's sessions, most recent activity first; pass the returned cursor for more."""
        check_id("user_id", user_id, self.settings.max_id_length)
        if not 1 <= limit <= 200:
            raise InvalidInput("limit", "must be between 1 and 200")
        return await self.store.list_sessions(user_id, limit, cursor)

    async def delete_session(self, session_id: str, user_id: str) -> None:
        """Delete the session with its turns, items and summary (running turns are fenced out)."""
        record = await self.session(session_id, user_id)
        await self.store.delete_session(record.id)

    async def items(
        self, session_id: str, user_id: str, after: int = -1, limit: int = 100
    ) -> list[tuple[int, Item]]:
        """One page of the transcript: (position, item) after ``after``, oldest first."""
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit", "must be between 1 and 1000")
        if after < -1:
            raise InvalidInput("after", "must be -1 or a position")
        record = await self.session(session_id, user_id)
        rows = await self.store.history(record.id, after=after, limit=limit)
        return [(pos, item) for pos, _, item in rows]

    async def events(
        self, turn_id: str, user_id: str | None = None, last_event_id: str = "0-0",
        idle_timeout: float = 300.0,
    ) -> AsyncIterator[tuple[str, dict[str, str]]]:  # fmt: skip
        """The turn's events (status, text deltas, tool calls/outputs) from ``last_event_id``.

        Text deltas come coalesced (one per ``TURNQ_STREAM_FLUSH_MS`` at most, holding the
        joined text); every other event follows exactly the text that preceded it.

        Ends after the terminal status event.  Events live in a Redis stream with a TTL;
        Postgres is checked whenever the stream is quiet, so a lost event (a flushed
        Redis) still ends the stream with the turn's real final status.
        """
        last = check_event_id(last_event_id)
        await self.get_turn(turn_id, user_id)  # 404 before streaming anything
        tid = check_turn_id(turn_id)
        key = keys.events_key(tid, self.settings.namespace)
        quiet_since = time.monotonic()
        async with self.hub.subscribe(key, last, turn=tid) as sub:
            while True:
                entries = await sub.get(QUIET_S)
                for last, event in entries:
                    quiet_since = time.monotonic()
                    yield last, event
                    if _terminal_event(event):
                        return
                if entries:
                    continue
                turn = await self.get_turn(turn_id, user_id)  # quiet: is it over?
                if turn.terminal:
                    final = {"type": "status", "status": turn.status.value}
                    if turn.error_code is not None:  # as the worker's own event says it
                        final |= {"error_code": turn.error_code.value, "error": turn.error or ""}
                    yield f"{last}-final", final
                    return
                if time.monotonic() - quiet_since > idle_timeout:
                    return

    async def compactions(self, session_id: str, user_id: str) -> list[dict[str, Any]]:
        """The session's recent compactions, newest first (status, marks, tokens, errors)."""
        record = await self.session(session_id, user_id)
        return await CompactionStore(self.db).history(record.id)

    async def turns(self, session_id: str, user_id: str) -> list[TurnResult]:
        record = await self.session(session_id, user_id)
        return [TurnResult.of(t) for t in await self.store.turns_of(record.id)]


class Client:
    """The same API, blocking; runs an AsyncClient on a private loop thread."""

    def __init__(self, inner: AsyncClient, portal: LoopThread) -> None:
        self._inner = inner
        self._portal = portal

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Client:
        portal = LoopThread("turnq-client")
        return cls(AsyncClient.from_settings(settings), portal)

    @property
    def settings(self) -> Settings:
        return self._inner.settings

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._portal.run(self._inner.close(), timeout=10)
        finally:
            self._portal.stop()

    def enqueue(
        self,
        session_id: str,
        user_id: str,
        content: str | list[dict[str, Any]],
        idempotency_key: str | None = None,
        multitask_strategy: str = "enqueue",
        *,
        agent: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Turn:
        inner = self._inner.enqueue(
            session_id, user_id, content, idempotency_key, multitask_strategy,
            agent=agent, metadata=metadata,
        )  # fmt: skip
        return self._portal.run(inner)

    def agents(self) -> list[dict[str, Any]]:
        return self._portal.run(self._inner.agents())

    def approve(
        self, turn_id: str, user_id: str, call_id: str, message: str | None = None
    ) -> Decided:
        return self._portal.run(self._inner.approve(turn_id, user_id, call_id, message))

    def reject(
        self, turn_id: str, user_id: str, call_id: str, message: str | None = None
    ) -> Decided:
        return self._portal.run(self._inner.reject(turn_id, user_id, call_id, message))

    def decide(
        self,
        turn_id: str,
        user_id: str,
        decisions: list[tuple[str, bool, str | None]],
        *,
        approver: bool = False,
    ) -> Decided:
        return self._portal.run(self._inner.decide(turn_id, user_id, decisions, approver=approver))

    def approvals(
        self,
        user_id: str,
        *,
        pending_only: bool = True,
        approver: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        inner = self._inner.approvals(
            user_id, pending_only=pending_only, approver=approver, limit=limit, cursor=cursor
        )
        return self._portal.run(inner)

    def usage(self, user_id: str) -> dict[str, int]:
        return self._portal.run(self._inner.usage(user_id))

    def cancel(self, turn_id: str, user_id: str, mode: str = "interrupt") -> TurnResult:
        return self._portal.run(self._inner.cancel(turn_id, user_id, mode))

    def list_sessions(
        self, user_id: str, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[SessionRecord], str | None]:
        return self._portal.run(self._inner.list_sessions(user_id, limit, cursor))

    def delete_session(self, session_id: str, user_id: str) -> None:
        self._portal.run(self._inner.delete_session(session_id, user_id))

    def items(
        self, session_id: str, user_id: str, after: int = -1, limit: int = 100
    ) -> list[tuple[int, Item]]:
        return self._portal.run(self._inner.items(session_id, user_id, after, limit))

    def get_turn(self, turn_id: str, user_id: str | None = None) -> TurnResult:
        return self._portal.run(self._inner.get_turn(turn_id, user_id))

    def wait(
        self,
        turn_id: str,
        timeout: float = 60.0,
        user_id: str | None = None,
        *,
        until_paused: bool = False,
    ) -> TurnResult:
        return self._portal.run(
            self._inner.wait(turn_id, timeout, user_id, until_paused=until_paused)
        )

    def session(self, session_id: str, user_id: str) -> SessionRecord:
        return self._portal.run(self._inner.session(session_id, user_id))

    def history(self, session_id: str, user_id: str) -> list[Item]:
        return self._portal.run(self._inner.history(session_id, user_id))

    def compactions(self, session_id: str, user_id: str) -> list[dict[str, Any]]:
        return self._portal.run(self._inner.compactions(session_id, user_id))

    def turns(self, session_id: str, user_id: str) -> list[TurnResult]:
        return self._portal.run(self._inner.turns(session_id, user_id))
