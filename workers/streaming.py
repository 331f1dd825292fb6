"""Stream a turn's progress to its Redis event stream, and stop it when asked.

    cancels = CancelListener(rt)          # one per worker process: one SUBSCRIBE
    stop = cancels.register(turn_id)      # an asyncio.Event set when a cancel arrives
    outbox = Outbox(rt, turn_id)           # events go out in order; text deltas coalesced
    result = await stream_run(rt, agent, turn_id, model_input, run_config, stop, outbox)

Events (``keys.events_key``): ``delta`` (text, coalesced: see ``Outbox``), ``tool_call``,
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
import time
from typing import TYPE_CHECKING, Any

from agents import Agent, RunConfig, RunHooks, Runner
from agents.result import RunResultStreaming
from redis.exceptions import RedisError

from shared import keys, metrics

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
                        turn_id = data.decode() if isinstance(data, bytes) else str(data)
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
    """A turn's stream events, sent in order without making the run wait for Redis.

    Text deltas are coalesced: the text of consecutive deltas waits in ``pending`` until
    ``stream_flush_ms`` after the first of them, or until it reaches ``stream_flush_chars``,
    and then goes out as one ``delta`` entry holding the joined text.  Any other event
    (tool call or output, retry, status) first moves the pending text out, then goes at
    once: it is never delayed behind text, and the order is kept.  One sender at a time
    takes everything queued so far in one pipeline, so a burst costs one round trip.

    While an agent with output guardrails runs, its events (text, tool calls, retries)
    are held and sent only once the run ended with its output passing them: text that
    a guardrail blocks never reaches a client (I11: as with a plain ``Runner.run``).
    Status events are never held.
    """

    def __init__(self, rt: Runtime, turn_id: str) -> None:
        self.rt = rt
        self.turn_id = turn_id
        self.flush_s = rt.settings.stream_flush_ms / 1000
        self.flush_chars = rt.settings.stream_flush_chars
        self.queued: list[dict[str, Any]] = []
        self.pending: list[str] = []
        self.pending_chars = 0
        self.pending_since = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.sender: asyncio.Task[None] | None = None
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
            return
        if event.get("type") == "delta" and self.flush_s > 0:
            text = str(event.get("text", ""))
            if not self.pending:
                self.pending_since = time.perf_counter()
            self.pending.append(text)
            self.pending_chars += len(text)
            if self.pending_chars >= self.flush_chars:
                self._move_text()
                self._send_soon()
            elif self.timer is None:
                self.timer = asyncio.get_running_loop().call_later(self.flush_s, self._on_timer)
            return
        self._move_text()
        self.queued.append(event)
        self._send_soon()

    def _on_timer(self) -> None:
        self.timer = None
        self._move_text()
        self._send_soon()

    def _move_text(self) -> None:
        """The pending text, joined, to the end of the send queue."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pending:
            self.queued.append({"type": "delta", "text": "".join(self.pending)})
            self.pending, self.pending_chars = [], 0
            metrics.STREAM_TEXT_HOLD.observe(time.perf_counter() - self.pending_since)

    def _send_soon(self) -> None:
        if self.queued and (self.sender is None or self.sender.done()):
            self.sender = asyncio.create_task(self._send())

    async def _send(self) -> None:
        while self.queued:  # events added while a batch is in flight go in the next one
            batch, self.queued = self.queued, []
            await publish(self.rt, self.turn_id, *batch)

    async def flushed(self) -> None:
        """Send the pending text now and wait until everything added so far is sent (or
        Redis gave up): the end of a run, whatever ended it."""
        self._move_text()
        self._send_soon()
        if self.sender is not None:
            await self.sender


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
    """Tell waiters (client.wait, SSE) something happened; Postgres stays the truth."""
    key = keys.events_key(turn_id)
    with contextlib.suppress(RedisError, OSError):
        async with rt.redis.pipeline(transaction=False) as pipe:
            for event in events:
                fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in event.items()}
                pipe.xadd(key, fields, maxlen=10_000, approximate=True)  # type: ignore[arg-type]
            if any(event.get("type") == "status" for event in events):
                pipe.expire(key, rt.settings.events_ttl_s)
            await pipe.execute()
