"""Stream a turn's progress to its Redis event stream, and stop it when asked.

    cancels = CancelListener(rt)          # one per worker process: one SUBSCRIBE
    stop = cancels.register(turn_id)      # an asyncio.Event set when a cancel arrives
    outbox = Outbox(rt, turn_id)           # events go out in order; text deltas coalesced
                                           # (rt.publisher: one sender per process)
    result = await stream_run(rt, agent, turn_id, model_input, run_config, stop, outbox)

Events (``keys.events_key``, text in the process's ``keys.text_key``: see
``shared.turn_events``): ``delta`` (text, coalesced: see ``Publisher``), ``tool_call``,
``tool_output``, ``retry``; status events come from ``workers/turn.py``.  Clients read them
through ``AsyncClient.events`` (SSE in the gateway), resuming from any event id.

A cancel request stops the run at its next safe point (``after_turn``: the current
model call and its tool calls finish) for ``interrupt``, or at once for ``rollback``,
whose items are discarded anyway.  The request itself lives in Postgres
(``turns.cancel_mode``); the pub/sub message only makes the worker notice sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from agents import Agent, RunConfig, RunHooks, Runner
from agents.result import RunResultStreaming
from redis.exceptions import RedisError

from shared import keys, metrics, turn_events
from shared.settings import Settings

if TYPE_CHECKING:
    from workers.runtime import Runtime

log = logging.getLogger(__name__)


class CancelListener:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.waiting: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None

    def register(self, turn_id: str) -> asyncio.Event:
        if self._task is None or self._task.done():
            # A fresh context: the listener must not carry the first drain's log fields.
            self._task = asyncio.create_task(self._listen(), context=contextvars.Context())
        event = asyncio.Event()
        self.waiting[turn_id] = event
        return event

    def unregister(self, turn_id: str) -> None:
        self.waiting.pop(turn_id, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        channel = keys.cancel_channel()
        while True:
            try:
                async with self.rt.redis.pubsub() as pubsub:
                    await pubsub.subscribe(channel)
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        data = message.get("data")
                        turn_id = turn_events.decode(data)
                        event = self.waiting.get(turn_id)
                        if event is not None:
                            event.set()
            except (RedisError, OSError):
                await asyncio.sleep(1.0)  # Redis away: commit-time checks still apply


async def stream_run(
    rt: Runtime,
    agent: Agent[Any],
    turn_id: str,
    model_input: list[Any],
    run_config: RunConfig,
    stop: asyncio.Event,
    outbox: Outbox,
    *,
    context: Any = None,
    hooks: RunHooks[Any] | None = None,
) -> RunResultStreaming:
    result = Runner.run_streamed(
        agent,
        model_input,
        context=context,
        hooks=hooks,
        run_config=run_config,
        max_turns=rt.settings.max_turns,
    )

    async def watch() -> None:
        await stop.wait()
        mode = await rt.turns.cancel_mode(turn_id)
        result.cancel(mode="immediate" if mode == "rollback" else "after_turn")

    watcher = asyncio.create_task(watch())
    passed = False
    try:
        async for event in result.stream_events():
            if outbox.held is None and _guarded(result.current_agent, run_config):
                outbox.hold()
            fields = describe(event)
            if fields is not None and not _replayed(fields):
                outbox.add(fields)
        passed = not stop.is_set()  # a stopped run's output may never have been checked
    finally:
        if passed:
            outbox.release()
        else:
            outbox.drop()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await outbox.flushed()
    return result


def _replayed(fields: dict[str, str]) -> bool:
    """A tool event of a step the journal replayed: clients saw it before the crash."""
    from workers.models import current_scope

    journal = current_scope().journal
    return journal is not None and fields.get("call_id") in journal.replayed_calls


def _guarded(agent: Agent[Any], run_config: RunConfig) -> bool:
    """The agent's output must pass output guardrails, which run only once it is final."""
    return bool(agent.output_guardrails or run_config.output_guardrails)


class Outbox:
    """A turn's stream events, handed to the process's ``Publisher`` in order.

    While an agent with output guardrails runs, its events (text, tool calls, retries)
    are held and sent only once the run ended with its output passing them: text that
    a guardrail blocks never reaches a client (I11: as with a plain ``Runner.run``).
    Status events are never held.
    """

    def __init__(self, rt: Runtime, turn_id: str) -> None:
        self.publisher = rt.publisher
        self.turn_id = turn_id
        self.held: list[dict[str, Any]] | None = None  # None: not holding

    def hold(self) -> None:
        if self.held is None:
            self.held = []

    def release(self) -> None:
        held, self.held = self.held or [], None
        for event in held:
            self.add(event)

    def drop(self) -> None:
        self.held = None

    def add(self, event: dict[str, Any]) -> None:
        if self.held is not None and event.get("type") != "status":
            self.held.append(event)
        elif event.get("type") == "delta":
            self.publisher.text(self.turn_id, str(event.get("text", "")))
        else:
            self.publisher.event(self.turn_id, event)

    async def flushed(self) -> None:
        """Send the pending text now and wait until everything added so far is sent (or
        Redis gave up): the end of a run, whatever ended it."""
        await self.publisher.flush(self.turn_id)

    def close(self) -> None:
        """The attempt is over on this process (it flushed its last event): forget the
        turn's text state."""
        self.publisher.forget(self.turn_id)


@dataclass
class _Text:
    """One turn's text state in a publisher."""

    pending: list[str] = field(default_factory=list)
    chars: int = 0
    since: float = 0.0
    anchor: str | None = None  # the id of the turn's last entry this process wrote
    n: int = 0  # chunks sent after it


class Publisher:
    """Every turn's events of one worker process, to Redis in order (decision 0014).

    A turn's text waits until ``stream_flush_ms`` after the first of it (0: not at all),
    or until ``stream_flush_chars`` of it wait; then the waiting text of every turn goes
    out as one entry of the process's text stream, one field per turn
    (``shared.turn_events``).  Any other event goes at once to the turn's own stream,
    after that turn's waiting text: it is never delayed behind text, and the order is
    kept.  One send at a time takes everything queued so far in one pipeline, so a
    chunk's anchor (its turn's last entry) is known when the chunk is written.
    """

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.ttl_s = settings.events_ttl_s
        self.flush_s = settings.stream_flush_ms / 1000
        self.flush_chars = settings.stream_flush_chars
        self.key = keys.text_key(secrets.token_hex(8))
        self.last_text_id = "0-0"  # the newest id of our text stream we know of
        self.turns: dict[str, _Text] = {}
        self.waiting: set[str] = set()  # turns with pending text
        self.queue: list[tuple[str, dict[str, Any] | None, str]] = []  # (turn, event | None, text)
        self.queued = 0  # items ever queued; ``sent`` of them are written (or given up)
        self.sent = 0
        self.flushes: list[tuple[int, asyncio.Future[None]]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.sender: asyncio.Task[None] | None = None
        self.expires_at = 0.0

    def text(self, turn_id: str, text: str) -> None:
        turn = self.turns.setdefault(turn_id, _Text())
        if not turn.pending:
            turn.since = time.perf_counter()
        turn.pending.append(text)
        turn.chars += len(text)
        if self.flush_s <= 0 or turn.chars >= self.flush_chars:
            self._cut(turn_id)
            self._send_soon()
            return
        self.waiting.add(turn_id)
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.flush_s, self._on_timer)

    def event(self, turn_id: str, event: dict[str, Any]) -> None:
        self.turns.setdefault(turn_id, _Text())
        self._cut(turn_id)
        self._put(turn_id, event, "")
        self._send_soon()

    async def flush(self, turn_id: str) -> None:
        """Send the turn's waiting text now; return once all queued so far is sent."""
        self._cut(turn_id)
        self._send_soon()
        if self.sent < self.queued:
            done = asyncio.get_running_loop().create_future()
            self.flushes.append((self.queued, done))
            await asyncio.shield(done)

    def forget(self, turn_id: str) -> None:
        """What is still queued goes out; text not cut yet is dropped (nobody flushed it)."""
        self.waiting.discard(turn_id)
        self.turns.pop(turn_id, None)

    def _put(self, turn_id: str, event: dict[str, Any] | None, text: str) -> None:
        self.queue.append((turn_id, event, text))
        self.queued += 1

    def _on_timer(self) -> None:
        self.timer = None
        for turn_id in list(self.waiting):
            self._cut(turn_id)
        self._send_soon()

    def _cut(self, turn_id: str) -> None:
        """The turn's waiting text, joined, to the end of the send queue."""
        self.waiting.discard(turn_id)
        turn = self.turns.get(turn_id)
        if turn is not None and turn.pending:
            self._put(turn_id, None, "".join(turn.pending))
            turn.pending, turn.chars = [], 0
            if self.flush_s > 0:  # 0: nothing is held
                metrics.STREAM_TEXT_HOLD.observe(time.perf_counter() - turn.since)

    def _send_soon(self) -> None:
        if self.queue and (self.sender is None or self.sender.done()):
            self.sender = asyncio.create_task(self._send(), context=contextvars.Context())

    async def _send(self) -> None:
        while self.queue:  # items queued while a batch is in flight go in the next one
            texts: dict[str, str] = {}
            events: list[tuple[str, dict[str, Any]]] = []
            evented: set[str] = set()
            taken = 0
            for turn_id, event, text in self.queue:
                if event is not None:
                    events.append((turn_id, event))
                    evented.add(turn_id)
                elif turn_id in evented:
                    break  # text after the turn's event: its anchor is that event's id
                elif turn_id in texts and (
                    self.flush_s <= 0 or len(texts[turn_id]) + len(text) > self.flush_chars
                ):
                    break  # a chunk holds one cut (0 ms) or up to flush_chars characters
                else:
                    texts[turn_id] = texts.get(turn_id, "") + text
                taken += 1
            del self.queue[:taken]
            try:
                await self._write(texts, events)
            except Exception as exc:  # Redis away (or a bug): Postgres stays the truth
                if not isinstance(exc, RedisError | OSError):
                    log.exception("stream events not sent")
                for turn_id in {*texts, *(t for t, _ in events)}:
                    if turn_id in self.turns:  # ids unknown: the next text opens an entry
                        self.turns[turn_id].anchor = None
            self.sent += taken
            while self.flushes and self.flushes[0][0] <= self.sent:
                _, done = self.flushes.pop(0)
                if not done.done():
                    done.set_result(None)

    async def _write(self, texts: dict[str, str], events: list[tuple[str, dict[str, Any]]]) -> None:
        chunks = self._chunks(texts, events)
        writes: list[str | None] = []  # per command: the turn whose entry it writes, "" text
        async with self.redis.pipeline(transaction=False) as pipe:
            if chunks:
                now = time.time()
                minid = f"{int((now - self.ttl_s) * 1000)}-0"
                pipe.xadd(self.key, chunks, minid=minid, approximate=True)  # type: ignore[arg-type]
                writes.append("")
                if now >= self.expires_at:
                    pipe.expire(self.key, self.ttl_s)
                    writes.append(None)
                    self.expires_at = now + 10
            for turn_id, event in events:
                turn = self.turns.get(turn_id) or _Text()  # a forgotten turn: no anchor
                fields = turn_events.wire(event) | {
                    turn_events.TEXT_STREAM: self.key,
                    turn_events.TEXT_FROM: self.last_text_id,
                    turn_events.PREVIOUS: turn.anchor or "",
                    turn_events.CHUNKS: str(turn.n),
                }
                key = keys.events_key(turn_id)
                pipe.xadd(key, fields, maxlen=10_000, approximate=True)  # type: ignore[arg-type]
                writes.append(turn_id)
                if event.get("type") == "status":
                    pipe.expire(key, self.ttl_s)
                    writes.append(None)
            results = await pipe.execute()
        for written, result in zip(writes, results, strict=True):
            if written == "":
                self.last_text_id = turn_events.decode(result)
            elif written is not None and (entry_of := self.turns.get(written)) is not None:
                entry_of.anchor, entry_of.n = turn_events.decode(result), 0

    def _chunks(
        self, texts: dict[str, str], events: list[tuple[str, dict[str, Any]]]
    ) -> dict[str, str]:
        """The text stream entry's fields; a turn's text with nothing to anchor it at opens
        an entry of its own stream instead (first in ``events``)."""
        chunks: dict[str, str] = {}
        for turn_id, text in texts.items():
            turn = self.turns.get(turn_id)
            if turn is None or turn.anchor is None:
                events.insert(0, (turn_id, {"type": "delta", "text": text}))
            else:
                turn.n += 1
                chunks[turn_id] = turn_events.chunk_value(turn.anchor, turn.n, text)
        return chunks


def describe(event: Any) -> dict[str, str] | None:
    """The client-facing form of an SDK stream event (None: not worth sending)."""
    if event.type == "raw_response_event":
        data = event.data
        if getattr(data, "type", "") == "response.output_text.delta" and data.delta:
            return {"type": "delta", "text": data.delta}
        return None
    if event.type == "run_item_stream_event":
        raw = getattr(event.item, "raw_item", None)
        if event.name == "tool_called":
            return {
                "type": "tool_call",
                "call_id": str(_get(raw, "call_id")),
                "name": str(_get(raw, "name")),
                "arguments": str(_get(raw, "arguments")),
            }
        if event.name == "tool_output":
            output = _get(raw, "output")
            return {
                "type": "tool_output",
                "call_id": str(_get(raw, "call_id")),
                "output": output if isinstance(output, str) else json.dumps(output, default=str),
            }
    return None


def _get(raw: Any, name: str) -> Any:
    return raw.get(name) if isinstance(raw, dict) else getattr(raw, name, None)


async def publish(rt: Runtime, turn_id: str, *events: dict[str, Any]) -> None:
    """Events about a turn this process does not run (its holder vanished); Postgres stays
    the truth."""
    key = keys.events_key(turn_id)
    with contextlib.suppress(RedisError, OSError):
        async with rt.redis.pipeline(transaction=False) as pipe:
            for event in events:
                fields = turn_events.wire(event)
                pipe.xadd(key, fields, maxlen=10_000, approximate=True)  # type: ignore[arg-type]
            if any(event.get("type") == "status" for event in events):
                pipe.expire(key, rt.settings.events_ttl_s)
            await pipe.execute()
