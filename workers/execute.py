"""Run one claimed turn's agent and say how it ended: ``Finished`` or ``Failed``.

    outcome = await execute(rt, turn, context, outbox)

Nothing here writes to Postgres; ``workers/turn.py`` commits the outcome.  Whatever
goes wrong while the agent runs or while its result is turned into items ends as a
``Failed`` with an error code (``shared.status.ErrorCode``) and a true reason: no
exception leaves a turn ``running`` for the reaper to re-run (I12).

* the model kept failing: ``model_unavailable`` / ``model_error`` (retries happened
  per call in ``workers/models.py``; nothing is retried here)
* ``TURNQ_TURN_TIMEOUT_S`` passed: ``timeout``
* a guardrail tripped: ``guardrail``; too many model calls: ``max_turns``
* anything the agent's own code raised: ``agent_error``; also a run that stopped
  because a tool needs approval (until turns can pause for a human)
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from agents.exceptions import (
    InputGuardrailTripwireTriggered,
    MaxTurnsExceeded,
    ModelBehaviorError,
    OutputGuardrailTripwireTriggered,
    ToolInputGuardrailTripwireTriggered,
    ToolOutputGuardrailTripwireTriggered,
)

from shared.compaction.turns import repair
from shared.sdk_session import summary_item
from shared.status import ErrorCode
from shared.store import Context, TurnRecord
from workers.context import CallBudget, updated_calibration
from workers.models import TurnScope, turn_scope
from workers.retry import ModelCallFailed, RetryPolicy
from workers.runtime import Runtime
from workers.streaming import Outbox, stream_run


@dataclass
class Finished:
    items: list[dict[str, Any]]
    output: str | None
    usage: dict[str, Any]
    context_tokens: int
    trimmed: bool
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class Failed:
    code: ErrorCode
    error: str
    items: list[dict[str, Any]] = field(default_factory=list)  # what stays in the transcript


async def execute(
    rt: Runtime, turn: TurnRecord, context: Context, outbox: Outbox
) -> Finished | Failed:
    user_item: dict[str, Any] = {"role": "user", "content": turn.input}
    model_input = build_model_input(context, user_item)
    budget = CallBudget(rt.policy, rt.estimator, rt.overhead_tokens, rt.calibration)
    stop = rt.cancels.register(turn.id)
    scope = TurnScope(RetryPolicy.from_settings(rt.settings), notify=outbox.add)
    started = time.perf_counter()
    deadline = asyncio.timeout(rt.settings.turn_timeout_s)
    try:
        async with deadline:
            with budget.active(), turn_scope(scope):
                result = await stream_run(
                    rt, rt.agent, turn.id, model_input, rt.run_config, stop, outbox
                )
        if result.interruptions:
            return Failed(ErrorCode.AGENT_ERROR, _needs_approval(result.interruptions))
        new_items = repair([user_item, *(_jsonable(i.to_input_item()) for i in result.new_items)])
        usage = result.context_wrapper.usage
        calls = [r.usage for r in result.raw_responses]
        return Finished(
            items=new_items,
            output=_output_text(result.final_output),
            usage={
                "requests": usage.requests,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "total_tokens": usage.total_tokens,
                "max_input_tokens": max((c.input_tokens for c in calls), default=0),
                "trimmed": budget.trimmed,
                "model_seconds": round(time.perf_counter() - started, 4),
            },
            context_tokens=_context_after(rt, budget, model_input, new_items, calls),
            trimmed=budget.trimmed,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
        )
    except Exception as exc:
        if isinstance(exc, TimeoutError) and deadline.expired():
            return Failed(
                ErrorCode.TIMEOUT,
                f"the turn did not finish within {rt.settings.turn_timeout_s:g} s "
                "(TURNQ_TURN_TIMEOUT_S)",
            )
        code, error = classify(exc)
        return Failed(code, error)
    finally:
        rt.cancels.unregister(turn.id)


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


def _needs_approval(interruptions: list[Any]) -> str:
    """The run stopped for a human decision, which turnq cannot wait for yet: say so,
    rather than the SDK's complaint about converting the approval item."""
    names = ", ".join(sorted({repr(getattr(i, "tool_name", None) or "?") for i in interruptions}))
    return (
        f"a tool needs approval before it runs ({names}); turnq cannot pause a turn for "
        "approval yet, so the turn ended without running it"
    )


def build_model_input(context: Context, user_item: dict[str, Any]) -> list[Any]:
    prefix: list[Any] = [summary_item(context.summary)] if context.summary else []
    return [*prefix, *context.summary_items, *context.items, user_item]


def _context_after(
    rt: Runtime, budget: CallBudget, model_input: list[Any], new_items: list[Any], calls: list[Any]
) -> int:
    """The session's context size for its next turn.

    The model's reported input tokens of the last call are the truth; only the answer
    after it is estimated.  If this turn was trimmed, the report undercounts the real
    view, so the whole view is estimated instead (calibrated by what the model measured).
    """
    last = calls[-1] if calls else None
    if last is not None and last.input_tokens and budget.largest_input_estimate:
        measured = max(c.input_tokens for c in calls)
        estimated = budget.largest_input_estimate + rt.overhead_tokens
        rt.calibration = updated_calibration(rt.calibration, measured, estimated)
    if last is not None and last.input_tokens and not budget.trimmed:
        return int(last.input_tokens + last.output_tokens)
    view = [*model_input[:-1], *new_items]
    return int((budget.count(view) + rt.overhead_tokens) * rt.calibration)


def _output_text(output: object) -> str | None:
    if output is None or isinstance(output, str):
        return output
    dump = getattr(output, "model_dump", None)
    return json.dumps(dump() if callable(dump) else output, default=str)


def _jsonable(item: object) -> dict[str, Any]:
    """A plain JSON item; NUL characters (which JSONB cannot hold) become U+FFFD."""
    text = json.dumps(item, default=_default, ensure_ascii=False)
    loaded: dict[str, Any] = json.loads(text)
    return _scrub(loaded) if "\\u0000" in text else loaded


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    return value


def _default(obj: object) -> object:
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(exclude_unset=True)
    return str(obj)
