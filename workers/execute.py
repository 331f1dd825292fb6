"""Run one claimed turn's agent and say how it ended: ``Finished``, ``Paused`` or ``Failed``.

    outcome = await execute(rt, turn, context, outbox)

Nothing here writes to Postgres; ``workers/turn.py`` commits the outcome.  Whatever
goes wrong while the agent runs or while its result is turned into items ends as a
``Failed`` with an error code (``shared.status.ErrorCode``) and a true reason: no
exception leaves a turn ``running`` for the reaper to re-run (I12).

* the model kept failing: ``model_unavailable`` / ``model_error`` (retries happened
  per call in ``workers/models.py``; nothing is retried here)
* ``TURNQ_TURN_TIMEOUT_S`` passed: ``timeout``
* a guardrail tripped: ``guardrail``; too many model calls: ``max_turns``
* anything the agent's own code raised: ``agent_error``
* a resumed turn whose saved run state cannot be loaded: ``state_unreadable``

A run that stops because tools need a person's approval is ``Paused``, no failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from agents import Agent, ModelResponse, RunHooks, RunState
from agents.exceptions import (
    InputGuardrailTripwireTriggered,
    MaxTurnsExceeded,
    ModelBehaviorError,
    OutputGuardrailTripwireTriggered,
    ToolInputGuardrailTripwireTriggered,
    ToolOutputGuardrailTripwireTriggered,
)
from agents.items import ToolApprovalItem

from shared import metrics
from shared.compaction.turns import repair
from shared.errors import Fenced
from shared.run_context import TurnContext
from shared.sdk_session import summary_item
from shared.status import ErrorCode
from shared.store import Context, TurnRecord
from shared.store.worker import nul_safe
from workers.context import CallBudget, updated_calibration
from workers.journal import Journal, JournalUnavailable
from workers.models import TurnScope, turn_scope
from workers.retry import ModelCallFailed, RetryPolicy
from workers.runtime import Runtime
from workers.streaming import Outbox, stream_run

log = logging.getLogger(__name__)


@dataclass
class Finished:
    items: list[dict[str, Any]]
    output: str | None
    output_json: Any
    agent: str  # who answered: the session's next turn starts there
    usage: dict[str, Any]
    context_tokens: int
    trimmed: bool


@dataclass
class Paused:
    """The run waits for a person to approve tool calls (shared/sql/pause.sql)."""

    state: dict[str, Any]  # {"start": the agent the run started at, "state": RunState JSON}
    approvals: list[dict[str, Any]]  # {call_id, tool, arguments, agent}
    pending_items: list[dict[str, Any]]  # the turn so far, pending calls marked
    finished_items: list[dict[str, Any]]  # what an interrupt keeps (pending calls repaired)
    usage: dict[str, Any]
    agent: str


@dataclass
class Failed:
    code: ErrorCode
    error: str
    items: list[dict[str, Any]] = field(default_factory=list)  # what stays in the transcript
    usage: dict[str, Any] | None = None
    agent: str | None = None  # who was running


class TurnHooks(RunHooks[Any]):
    """Per turn: usage request by request, per agent (the SDK reports it per call, without
    the agent), and an ``agent`` event when a handoff changes who answers."""

    def __init__(self, agent: str, notify: Any, previous: dict[str, Any] | None = None) -> None:
        self.agent = agent
        # A resumed turn's usage goes on from its paused run's (the stored usage is
        # cumulative; the session's counters get only the growth).
        self.calls: list[dict[str, Any]] = list((previous or {}).get("calls") or [])
        self.notify = notify

    async def on_agent_start(self, context: Any, agent: Agent[Any]) -> None:
        self.agent = agent.name

    async def on_handoff(self, context: Any, from_agent: Agent[Any], to_agent: Agent[Any]) -> None:
        self.agent = to_agent.name
        self.notify({"type": "agent", "agent": to_agent.name, "from": from_agent.name})

    async def on_llm_end(self, context: Any, agent: Agent[Any], response: ModelResponse) -> None:
        u = response.usage
        self.calls.append(
            {
                "agent": agent.name,
                "requests": u.requests,
                "input_tokens": u.input_tokens,
                "cached_tokens": u.input_tokens_details.cached_tokens or 0,
                "output_tokens": u.output_tokens,
                "reasoning_tokens": u.output_tokens_details.reasoning_tokens or 0,
            }
        )

    def usage(self, **extra: Any) -> dict[str, Any]:
        """The turn's usage: totals, per agent, and each model call (for billing/quotas)."""
        totals = {k: sum(c[k] for c in self.calls) for k in USAGE_KEYS}
        by_agent: dict[str, dict[str, int]] = {}
        for call in self.calls:
            mine = by_agent.setdefault(call["agent"], dict.fromkeys(USAGE_KEYS, 0))
            for k in USAGE_KEYS:
                mine[k] += call[k]
        return {
            **totals,
            "total_tokens": totals["input_tokens"] + totals["output_tokens"],
            "max_input_tokens": max((c["input_tokens"] for c in self.calls), default=0),
            "by_agent": by_agent,
            "calls": self.calls,
            **extra,
        }


USAGE_KEYS = ("requests", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")


async def execute(
    rt: Runtime, turn: TurnRecord, context: Context, outbox: Outbox, fence: int
) -> Finished | Paused | Failed:
    user_item: dict[str, Any] = {"role": "user", "content": turn.message}
    agent = starting_agent(rt, turn)
    hooks = TurnHooks(agent.name, outbox.add, previous=turn.usage)
    model_input = build_model_input(context, user_item)
    budget = CallBudget(rt.policy, rt.estimator, rt.calibration)
    stop = rt.cancels.register(turn.id)
    journal = Journal.of(rt, turn, fence) if rt.settings.journal else None  # TURNQ_JOURNAL
    if journal is not None and journal.replaying:  # re-run: journaled steps replay, no deltas
        outbox.add({"type": "resumed", "journaled_steps": str(len(journal.steps))})
    scope = TurnScope(RetryPolicy.from_settings(rt.settings), notify=outbox.add, journal=journal)
    started = time.perf_counter()
    deadline = asyncio.timeout(rt.settings.turn_timeout_s)
    try:
        async with deadline:
            run_input: Any = model_input
            if turn.run_state is not None:  # resumed after its approvals were decided
                agent, run_input = await _resume(rt, turn, agent)
                if journal is not None:
                    journal.model_calls = int(turn.run_state.get("model_calls", 0))
                run_context = None  # the saved state's, overridden with this turn's
            else:
                run_context = await _run_context(rt, turn, agent)
            with budget.active(), turn_scope(scope):
                result = await stream_run(
                    rt, agent, turn.id, run_input, rt.run_config, stop, outbox,
                    context=run_context, hooks=hooks,
                )  # fmt: skip
        answered = result.last_agent.name  # a weak reference in the SDK: keep the name
        done = [_jsonable(i.to_input_item()) for i in result.new_items if not _approval(i)]
        if result.interruptions:
            return _paused(result, agent, user_item, done, hooks, started, journal)
        new_items = repair([user_item, *done])
        output_json = nul_safe(_structured(result.final_output))
        usage = hooks.usage(trimmed=budget.trimmed, model_seconds=_since(started))
        return Finished(
            items=new_items,
            output=nul_safe(result.final_output)
            if output_json is None
            else json.dumps(output_json, ensure_ascii=False),
            output_json=output_json,
            agent=answered,
            usage=usage,
            context_tokens=_context_after(rt, budget, model_input, new_items, hooks.calls),
            trimmed=budget.trimmed,
        )
    except Exception as exc:
        cause = _infrastructure(exc)
        if cause is not None:  # not the turn's fault: the drain stops (fenced out, or
            raise cause from None  # Postgres away), the turn is run again elsewhere
        return _failed(rt, exc, deadline.expired(), user_item, hooks, started, agent, turn)
    finally:
        rt.cancels.unregister(turn.id)
        metrics.MODEL_SECONDS.observe(time.perf_counter() - started)


def _failed(
    rt: Runtime,
    exc: Exception,
    timed_out: bool,
    user_item: dict[str, Any],
    hooks: TurnHooks,
    started: float,
    agent: Agent[Any],
    turn: TurnRecord,
) -> Failed:
    """How a run that raised ends: its error code and a true reason."""
    if isinstance(exc, StateUnreadable):
        return Failed(ErrorCode.STATE_UNREADABLE, str(exc), usage=turn.usage, agent=agent.name)
    if isinstance(exc, TimeoutError) and timed_out:
        code, error = (
            ErrorCode.TIMEOUT,
            f"the turn did not finish within {rt.settings.turn_timeout_s:g} s "
            "(TURNQ_TURN_TIMEOUT_S)",
        )
    else:
        code, error = classify(exc)
    # A guardrail's verdict is part of the conversation: the user's message stays in
    # the transcript (with no answer); any other failure leaves no trace.
    kept = [user_item] if code is ErrorCode.GUARDRAIL else []
    usage = hooks.usage(model_seconds=_since(started))
    return Failed(code, error, items=kept, usage=usage, agent=hooks.agent)


_INFRASTRUCTURE = (Fenced, JournalUnavailable)


def _infrastructure(exc: BaseException) -> BaseException | None:
    """A stale holder (Fenced) or Postgres failing under a journal write, anywhere in the
    exception's chain: the SDK wraps what a tool raised (``UserError: Error running tool``)
    and the drain must see the original to stop as fenced out.  (A tool's own database
    errors are the agent's, ``agent_error``.)"""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _INFRASTRUCTURE):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def starting_agent(rt: Runtime, turn: TurnRecord) -> Agent[Any]:
    """The session's active agent (where its last turn ended), through its entry agent's
    handoff graph; the entry agent if that name is gone from the deployment."""
    agent, fell_back = rt.registry.resolve(turn.entry_agent, turn.active_agent)
    if fell_back:
        metrics.AGENT_FALLBACKS.inc()
        log.warning(
            "the session's active agent is not in the deployment; starting at its entry agent",
            extra={"turn_id": turn.id, "active_agent": turn.active_agent, "agent": agent.name},
        )
    return agent


async def _run_context(rt: Runtime, turn: TurnRecord, agent: Agent[Any]) -> Any:
    ctx = TurnContext(
        user_id=turn.user_id,
        session_id=turn.session_key,
        turn_id=turn.id,
        seq=turn.seq,
        attempt=turn.attempts,
        entry_agent=turn.entry_agent or rt.registry.default,
        active_agent=agent.name,
        metadata=dict(turn.metadata or {}),
    )
    factory = rt.registry.context_factory
    if factory is None:
        return ctx
    built = factory(ctx)
    return await built if inspect.isawaitable(built) else built


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 4)


def _structured(output: object) -> Any:
    """A structured final output (``output_type``) as JSON; None for plain text."""
    if output is None or isinstance(output, str):
        return None
    dump = getattr(output, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return json.loads(json.dumps(dataclasses.asdict(output), default=str))
    return json.loads(json.dumps(output, default=str))


def classify(exc: BaseException) -> tuple[ErrorCode, str]:
    """The error code and a true, human-readable reason for an exception from a run."""
    if isinstance(exc, ModelCallFailed):
        return exc.code, str(exc)
    if isinstance(exc, InputGuardrailTripwireTriggered | OutputGuardrailTripwireTriggered):
        kind = "input" if isinstance(exc, InputGuardrailTripwireTriggered) else "output"
        name = exc.guardrail_result.guardrail.get_name()
        return ErrorCode.GUARDRAIL, f"the {kind} guardrail {name!r} tripped"
    if isinstance(exc, ToolInputGuardrailTripwireTriggered | ToolOutputGuardrailTripwireTriggered):
        name = getattr(exc.guardrail, "name", None) or type(exc.guardrail).__name__
        return ErrorCode.GUARDRAIL, f"the tool guardrail {name!r} tripped"
    if isinstance(exc, MaxTurnsExceeded):
        return ErrorCode.MAX_TURNS, f"the agent exceeded max_turns: {exc.message}"
    if isinstance(exc, ModelBehaviorError):
        return ErrorCode.MODEL_ERROR, f"the model's answer could not be used: {exc.message}"
    text = str(exc) or type(exc).__name__
    return ErrorCode.AGENT_ERROR, f"{type(exc).__name__}: {text}"[:2000]


class StateUnreadable(Exception):
    pass


def _approval(item: Any) -> bool:
    return isinstance(item, ToolApprovalItem)


async def _resume(rt: Runtime, turn: TurnRecord, agent: Agent[Any]) -> tuple[Agent[Any], Any]:
    """The paused run, loaded afresh (resuming mutates it) with the decisions applied."""
    saved = turn.run_state or {}
    graph = rt.registry.graph(turn.entry_agent)
    start = graph.get(str(saved.get("start")), rt.registry.entry(turn.entry_agent))
    decisions = {d["call_id"]: d for d in turn.decisions or []}
    try:
        context = await _run_context(rt, turn, start)
        state = await RunState.from_json(
            rt.registry.entry(turn.entry_agent), saved["state"], context_override=context
        )
        for item in state.get_interruptions():
            decided = decisions.get(str(getattr(item, "call_id", "")))
            if decided is not None and decided["decision"] == "approved":
                state.approve(item)
            else:
                state.reject(item, rejection_message=rejection_message(decided))
    except Exception as exc:
        raise StateUnreadable(
            f"the paused run's saved state could not be loaded ({type(exc).__name__}: "
            f"{str(exc)[:500]}); did the deployment's agents or the Agents SDK version change?"
        ) from exc
    return start, state


def rejection_message(decided: dict[str, Any] | None) -> str:
    """What the model sees as the output of a call a person did not approve."""
    if decided is None:
        return "this tool call was not approved"
    if decided["decision"] == "expired":
        return "approval timed out: nobody approved this tool call in time, so it did not run"
    message = decided.get("message")
    return (
        f"the user rejected this tool call: {message}"
        if message
        else ("the user rejected this tool call")
    )


def _paused(
    result: Any,
    agent: Agent[Any],
    user_item: dict[str, Any],
    done: list[dict[str, Any]],
    hooks: TurnHooks,
    started: float,
    journal: Journal | None,
) -> Paused:
    asked = [
        {
            "call_id": str(i.call_id),
            "tool": str(i.name),
            "arguments": str(i.arguments or "{}"),
            "agent": i.agent.name,
        }
        for i in result.interruptions
    ]
    pending = {a["call_id"] for a in asked}
    preview = [
        {**item, "approval": "pending"}
        if item.get("type") == "function_call" and item.get("call_id") in pending
        else item
        for item in [user_item, *done]
    ]
    state = result.to_state().to_json(context_serializer=lambda _context: {})
    return Paused(
        state={
            "start": agent.name,
            "state": state,
            "model_calls": journal.model_calls if journal is not None else 0,
        },
        approvals=asked,
        pending_items=preview,
        finished_items=repair([user_item, *done]),
        usage=hooks.usage(model_seconds=_since(started)),
        agent=hooks.agent,
    )


def build_model_input(context: Context, user_item: dict[str, Any]) -> list[Any]:
    prefix: list[Any] = [summary_item(context.summary)] if context.summary else []
    return [*prefix, *context.summary_items, *context.items, user_item]


def _context_after(
    rt: Runtime,
    budget: CallBudget,
    model_input: list[Any],
    new_items: list[Any],
    calls: list[dict[str, Any]],
) -> int:
    """The session's context size for its next turn.

    The model's reported input tokens of the last call are the truth; only the answer
    after it is estimated.  If this turn was trimmed, the report undercounts the real
    view, so the whole view is estimated instead (calibrated by what the model measured).
    """
    last = calls[-1] if calls else None
    if last is not None and last["input_tokens"] and budget.largest_input_estimate:
        measured = max(c["input_tokens"] for c in calls)
        estimated = budget.largest_input_estimate + budget.overhead
        rt.calibration = updated_calibration(rt.calibration, measured, estimated)
    if last is not None and last["input_tokens"] and not budget.trimmed:
        return int(last["input_tokens"] + last["output_tokens"])
    view = [*model_input[:-1], *new_items]
    return int((budget.count(view) + budget.overhead) * rt.calibration)


def _jsonable(item: object) -> dict[str, Any]:
    """A plain JSON item; NUL characters (which JSONB cannot hold) become U+FFFD."""
    text = json.dumps(item, default=_default, ensure_ascii=False)
    loaded: dict[str, Any] = json.loads(text)
    if "\\u0000" not in text:
        return loaded
    safe: dict[str, Any] = nul_safe(loaded)
    return safe


def _default(obj: object) -> object:
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(exclude_unset=True)
    return str(obj)
