"""An agent whose model calls and tool runs are counted in Redis, for the step-journal chaos
tests (tests/chaos/test_journal.py): ``TURNQ_AGENT=tests.agents_steps:steps``.

Counters live in Redis, not in the process, so they outlive a ``kill -9``.  Everything is
keyed by a *tag*, the first word of the turn's message (unique per turn); the rest of the
message says what the turn does:

* ``<tag> [three]``: model 0 calls ``note(a)``, model 1 calls ``note(b)``, model 2 answers
  (3 model calls, 2 tool calls);
* ``<tag> [pay]``: model 0 calls ``pay`` (non-idempotent), model 1 answers;
* ``<tag> [approve]``: model 0 calls ``transfer`` (needs a person's approval), model 1 answers;
* ``<tag> [nul]``: model 0 calls ``nul`` (its output holds U+0000), model 1 answers with a
  text holding U+0000 too;
* anything else: one model call answers ``ok: <message>`` (the chaos load's turns).

Each model response also says ``step <n> of <tag>`` as text, so a test sees which deltas a
client was sent.  Where to stop is set by the test in Redis (``stop_key``) before it
enqueues: ``model:<n>`` (inside model call n), ``tool:<name>`` (inside the tool, after its
effect) or ``after:<name>`` (once the tool returned and its output was journaled, before the
next model call).  The first process to get there writes ``"<where> <pid>"`` to
``at_key`` and waits (without blocking its event loop), so the test kills exactly that
worker at exactly that point; a re-run passes through.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aredis
from agents import Agent, AgentHooks, ModelResponse, RunContextWrapper, Tool, function_tool
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call
from agents.testing.model import ModelCall, ModelStepResult

from shared.run_context import non_idempotent
from shared.settings import get_settings

HOLD_S = 120.0  # how long a stopped step waits for its kill before going on


def _key(tag: str, what: str) -> str:
    return f"{get_settings().namespace}test-steps:{tag}:{what}"


def stop_key(tag: str) -> str:
    return _key(tag, "stop")


def at_key(tag: str) -> str:
    return _key(tag, "at")


def go_key(tag: str) -> str:
    return _key(tag, "go")


def calls_key(tag: str) -> str:
    """Hash: ``model:<n>`` -> calls of model step n; ``<tool>`` -> runs of the tool."""
    return _key(tag, "calls")


def idempotency_keys_key(tag: str) -> str:
    """List: the idempotency key each tool run was given."""
    return _key(tag, "idempotency")


def inputs_key(tag: str) -> str:
    """List: per model call, its step and the tool outputs of this turn it was shown."""
    return _key(tag, "inputs")


def turn_tag_key(turn_id: str) -> str:
    return f"{get_settings().namespace}test-steps:turn:{turn_id}"


def _redis() -> aredis.Redis:
    return aredis.Redis.from_url(get_settings().require_redis_url())


async def checkpoint(tag: str, where: str) -> None:
    """Stop here (the first time only) if the test asked to."""
    async with _redis() as r:
        stop = await r.get(stop_key(tag))
        if stop is None or stop.decode() != where:
            return
        if not await r.set(_key(tag, f"arrived:{where}"), "1", nx=True, ex=600):
            return  # a re-run: go on
        await r.set(at_key(tag), f"{where} {os.getpid()}", ex=600)
        for _ in range(int(HOLD_S / 0.05)):
            await asyncio.sleep(0.05)  # the test kills (or freezes) this process meanwhile
            if await r.exists(go_key(tag)):
                return  # the test lets it go on (a frozen holder woken up, now stale)


def _tail(items: Any) -> list[dict[str, Any]]:
    """The items after the last user message (what this turn did so far)."""
    tail: list[dict[str, Any]] = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("role") == "user":
            tail = []
        elif isinstance(item, dict):
            tail.append(item)
    return tail


def _message(items: Any) -> str:
    if isinstance(items, str):
        return items
    for item in reversed(items):
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            return content if isinstance(content, str) else str(content)
    return ""


PLANS: dict[str, list[tuple[str, dict[str, str]]]] = {
    "[three]": [("note", {"name": "a"}), ("note", {"name": "b"})],
    "[pay]": [("pay", {"order": "o1"})],
    "[approve]": [("transfer", {"amount": "5"})],
    "[nul]": [("nul", {})],
}


async def _respond(call: ModelCall) -> ModelStepResult:
    message = _message(call.input)
    tag = message.split(" ", 1)[0]
    plan = next((p for k, p in PLANS.items() if k in message), None)
    if plan is None:
        return [assistant_message(f"ok: {message}", item_id=f"msg_{uuid.uuid4().hex}")]
    outputs = [str(i.get("output")) for i in _tail(call.input) if "output" in i]
    step = len(outputs)
    async with _redis() as r:
        await r.hincrby(calls_key(tag), f"model:{step}", 1)
        await r.rpush(inputs_key(tag), json.dumps({"step": step, "outputs": outputs}))
    await checkpoint(tag, f"model:{step}")
    text = assistant_message(f"step {step} of {tag}. ", item_id=f"msg_{uuid.uuid4().hex}")
    if step < len(plan):
        name, args = plan[step]
        call_id = f"call_{uuid.uuid4().hex}"
        return [text, function_call(name, {"tag": tag, **args}, call_id=call_id)]
    answer = f"done: {message} | {' | '.join(outputs)}"
    if "[nul]" in message:
        answer += " nul\u0000here"
    return [assistant_message(answer, item_id=f"msg_{uuid.uuid4().hex}")]


class CountingModel(ScriptedModel):
    """The SDK's ``ScriptedModel``, every call answered by ``_respond`` (never runs out)."""

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        self.enqueue(ModelStep.respond(_respond))
        return await super().get_response(*args, **kwargs)

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        self.enqueue(ModelStep.respond(_respond))
        async for event in super().stream_response(*args, **kwargs):
            yield event


async def _effect(ctx: RunContextWrapper[Any], tag: str, tool: str) -> None:
    """The tool's side effect: counted, with the idempotency key it was given."""
    turn = ctx.context
    call_id = str(getattr(ctx, "tool_call_id", ""))
    async with _redis() as r:
        await r.set(turn_tag_key(turn.turn_id), tag, ex=600)
        await r.hincrby(calls_key(tag), tool, 1)
        await r.rpush(idempotency_keys_key(tag), f"{tool} {turn.idempotency_key(call_id)}")
    await checkpoint(tag, f"tool:{tool}")


@function_tool
async def note(ctx: RunContextWrapper[Any], tag: str, name: str) -> str:
    """Notes a name (idempotent: safe to run again)."""
    await _effect(ctx, tag, f"note:{name}")
    return f"noted {name}"


@non_idempotent
@function_tool
async def pay(ctx: RunContextWrapper[Any], tag: str, order: str) -> str:
    """Pays for an order (never twice)."""
    await _effect(ctx, tag, "pay")
    return f"paid {order}"


@function_tool(needs_approval=True)
async def transfer(ctx: RunContextWrapper[Any], tag: str, amount: str) -> str:
    """Transfers money; a person approves it first (non-idempotent by default)."""
    await _effect(ctx, tag, "transfer")
    return f"transferred {amount}"


@function_tool
async def nul(ctx: RunContextWrapper[Any], tag: str) -> str:
    """Returns text holding a NUL character (which Postgres JSONB cannot store)."""
    await _effect(ctx, tag, "nul")
    return "nul\u0000output"


class StopAfterTools(AgentHooks[Any]):
    """``after:<tool>``: the tool returned and its output is journaled; no model call yet."""

    async def on_tool_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool, result: Any
    ) -> None:
        turn_id = getattr(context.context, "turn_id", None)
        async with _redis() as r:
            tag = await r.get(turn_tag_key(str(turn_id)))
        if tag is not None:
            await checkpoint(tag.decode(), f"after:{tool.name}")


def steps() -> Agent[Any]:
    return Agent(
        name="steps",
        model=CountingModel(),
        tools=[note, pay, transfer, nul],
        hooks=StopAfterTools(),
    )
