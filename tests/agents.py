"""Agents for tests, loaded by worker subprocesses through ``TURNQ_AGENT=tests.agents:NAME``.

``EchoModel`` answers ``echo: <last user message> [ctx=<items it saw>]`` after an
optional delay (fixed, or random in a range), so tests can see exactly what context a
turn ran with.  A message
containing ``FAIL-PERMANENT`` makes the model raise a non-retryable error.

``misbehaving`` fails in the way its message asks (``[loop]``, ``[slow]``, ``[kill]``, ...),
so one worker can produce every error code; its model logs every call to
``TEST_CALL_LOG`` so a test can count calls made in another (even a killed) process.

Agents as written (I11; tests/system/test_agent*.py), on ``Replying`` models (the SDK's
``ScriptedModel`` answering each call from the call): ``support`` (Triage hands billing
questions to Billing, whose ``whoami`` tool reports the run context), ``DESKS`` (the same
two as a mapping of entry agents), ``account_context`` (a TURNQ_CONTEXT_FACTORY),
``features`` (an entry agent per feature: guardrails of every kind, a loop for max_turns,
structured output, no model at all, and models that only answer whole) and ``routed``
(handoff targets whose models the deployment's provider must serve).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from agents import (
    Agent,
    GuardrailFunctionOutput,
    Model,
    ModelResponse,
    RunContextWrapper,
    ToolGuardrailFunctionOutput,
    ToolInputGuardrailData,
    ToolOutputGuardrailData,
    UserError,
    function_tool,
    input_guardrail,
    output_guardrail,
    tool_input_guardrail,
    tool_output_guardrail,
)
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call
from agents.testing.model import ModelCall, ModelResponder, ModelStepResult
from agents.usage import Usage
from openai.types.responses import (
    Response,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from pydantic import BaseModel

from shared.models.offline import response_stream_events
from shared.run_context import TurnContext


def _last_user_text(items: Any) -> str:
    if isinstance(items, str):
        return items
    for item in reversed(items):
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            return content if isinstance(content, str) else str(content)
    return ""


class EchoModel(Model):
    """``latency_s`` per call, plus a random ``0..jitter_s`` on top."""

    def __init__(self, latency_s: float = 0.0, jitter_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.jitter_s = jitter_s

    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kw: Any
    ) -> ModelResponse:
        delay = self.latency_s + (random.uniform(0.0, self.jitter_s) if self.jitter_s else 0.0)
        if delay:
            await asyncio.sleep(delay)
        text = _last_user_text(input)
        if "FAIL-PERMANENT" in text:
            raise UserError("the test asked this turn to fail")
        n = 1 if isinstance(input, str) else len(input)
        message = ResponseOutputMessage(
            id="msg_echo",
            type="message",
            role="assistant",
            status="completed",
            content=[
                ResponseOutputText(
                    type="output_text", text=f"echo: {text} [ctx={n}]", annotations=[]
                )
            ],
        )
        return ModelResponse(
            output=[message],
            usage=Usage(requests=1, input_tokens=10 * n, output_tokens=5, total_tokens=10 * n + 5),
            response_id=None,
        )

    async def stream_response(
        self, system_instructions: Any, input: Any, *args: Any, **kw: Any
    ) -> AsyncIterator[Any]:
        """The same answer as Responses stream events (word deltas, then completed)."""
        reply = await self.get_response(system_instructions, input, *args, **kw)
        usage = reply.usage
        response = Response(
            id="resp_echo",
            created_at=0,
            model="echo",
            object="response",
            output=list(reply.output),
            tool_choice="auto",
            tools=[],
            parallel_tool_calls=False,
            status="completed",
            usage=ResponseUsage(
                input_tokens=usage.input_tokens,
                input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
                output_tokens=usage.output_tokens,
                output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
                total_tokens=usage.total_tokens,
            ),
        )
        for event in response_stream_events(response):
            yield event


def echo() -> Agent[Any]:
    return Agent(name="echo", model=EchoModel())


def slow_echo() -> Agent[Any]:
    """Latency from TEST_MODEL_LATENCY_S (default 2 s): time to kill or pause a worker mid-turn."""
    return Agent(
        name="slow-echo", model=EchoModel(float(os.environ.get("TEST_MODEL_LATENCY_S", "2")))
    )


# --- every error code on request (tests/system/test_error_codes.py) ------------------


class RespondingModel(ScriptedModel):
    """The SDK's ``ScriptedModel`` with a script that never runs out: every call is
    answered by ``responder`` (a ``ModelStep.respond`` step queued per call), so one
    long-lived worker can serve any number of turns."""

    def __init__(self, responder: Any) -> None:
        super().__init__()
        self.responder = responder

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        self.enqueue(ModelStep.respond(self.responder))
        return await super().get_response(*args, **kwargs)

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        self.enqueue(ModelStep.respond(self.responder))
        async for event in super().stream_response(*args, **kwargs):
            yield event


def log_call(text: str) -> None:
    """One line per model call (the turn's message, JSON) in ``TEST_CALL_LOG``, if set.

    A file, not memory: the test process counts calls made by a worker, even one that
    killed itself right after logging."""
    path = os.environ.get("TEST_CALL_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(text) + "\n")


def _tool_ran(items: Any) -> bool:
    """Whether a tool output follows the last user message (the turn's second call)."""
    if isinstance(items, str):
        return False
    ran = False
    for item in items:
        if isinstance(item, dict) and item.get("role") == "user":
            ran = False
        elif isinstance(item, dict) and item.get("type") == "function_call_output":
            ran = True
    return ran


async def _misbehave(call: ModelCall) -> ModelStepResult:
    text = _last_user_text(call.input)
    log_call(text)
    if "[kill]" in text:  # a poison turn: its worker dies with it, every time
        os.kill(os.getpid(), signal.SIGKILL)
    if "[slow]" in text:
        await asyncio.sleep(float(os.environ.get("TEST_SLOW_S", "60")))
    if "[loop]" in text:  # never done: another tool call, whatever the tool said
        return [function_call("ping", {}, call_id=f"call_{uuid.uuid4().hex}")]
    if "[leak]" in text:
        return [assistant_message("the SECRET is 42")]
    for marker, tool, args in (
        ("[explode]", "explode", {}),
        ("[wire]", "wire_money", {"amount": 5}),
    ):
        if marker in text and not _tool_ran(call.input):
            return [function_call(tool, args, call_id=f"call_{uuid.uuid4().hex}")]
    return [assistant_message(f"ok: {text}")]


@function_tool
def ping() -> str:
    """Answers pong."""
    return "pong"


@function_tool(failure_error_function=None)
def explode() -> str:
    """Raises; with no failure_error_function the exception ends the run."""
    raise RuntimeError("the explode tool blew up")


@function_tool(needs_approval=True)
def wire_money(amount: int) -> str:
    """Needs a human's approval before it runs."""
    return f"sent {amount}"


@input_guardrail(run_in_parallel=False)  # blocking: the model is never asked
async def no_forbidden_topics(
    ctx: RunContextWrapper[Any], agent: Agent[Any], input: Any
) -> GuardrailFunctionOutput:
    return GuardrailFunctionOutput(
        output_info=None, tripwire_triggered="[forbidden]" in _last_user_text(input)
    )


@output_guardrail
async def no_secrets_out(
    ctx: RunContextWrapper[Any], agent: Agent[Any], output: Any
) -> GuardrailFunctionOutput:
    return GuardrailFunctionOutput(output_info=None, tripwire_triggered="SECRET" in str(output))


def misbehaving() -> Agent[Any]:
    """Fails as its message asks: ``[forbidden]`` trips the input guardrail, ``[leak]`` the
    output guardrail, ``[loop]`` calls ``ping`` forever (max_turns), ``[explode]`` calls a
    tool that raises, ``[wire]`` a tool that needs approval, ``[slow]`` sleeps
    ``TEST_SLOW_S`` (timeout), ``[kill]`` SIGKILLs its worker; anything else answers
    ``ok: <message>``.  ``TEST_AGENT_NAME`` renames it (a deployment that changed)."""
    return Agent(
        name=os.environ.get("TEST_AGENT_NAME", "misbehaving"),
        model=RespondingModel(_misbehave),
        tools=[ping, explode, wire_money],
        input_guardrails=[no_forbidden_topics],
        output_guardrails=[no_secrets_out],
    )


def jittery_echo() -> Agent[Any]:
    """Latency random per call between TEST_MODEL_LATENCY_MIN_S and TEST_MODEL_LATENCY_MAX_S
    (default 0-0.6 s): model calls of hundreds of ms that end at scattered moments, so a
    fault lands mid-call on some sessions and between calls on others."""
    low = float(os.environ.get("TEST_MODEL_LATENCY_MIN_S", "0"))
    high = float(os.environ.get("TEST_MODEL_LATENCY_MAX_S", "0.6"))
    return Agent(name="jittery-echo", model=EchoModel(low, max(0.0, high - low)))


# --- summarizers for compaction tests (TURNQ_SUMMARIZER=tests.agents:NAME) -------------


class BrokenSummarizer:
    """The summarizer's model is down."""

    async def __call__(self, previous: str | None, evicted: Any, *, max_tokens: int) -> str:
        raise RuntimeError("summarizer model unavailable (HTTP 503)")


class EmptySummarizer:
    """A summarizer that answers with nothing."""

    async def __call__(self, previous: str | None, evicted: Any, *, max_tokens: int) -> str:
        return "   "


def slow_extractive() -> Any:
    """The real extractive summarizer, slowed down so compactions overlap chat turns."""
    from shared.compaction.summarizers import ExtractiveSummarizer

    inner = ExtractiveSummarizer()
    delay = float(os.environ.get("TEST_SUMMARIZER_LATENCY_S", "0.3"))

    async def summarize(previous: str | None, evicted: Any, *, max_tokens: int) -> str:
        await asyncio.sleep(delay)
        return await inner(previous, evicted, max_tokens=max_tokens)

    return summarize


# --- agents as written (I11): tests/system/test_agents*.py ---------------------------
#
# Models here are the SDK's ``ScriptedModel`` answering every call from the call itself
# (``Replying``), so one long-lived worker serves any number of turns.  Each model call
# reports its own usage (cached and reasoning tokens included) so a test can add them up.


class Replying(ScriptedModel):
    """``ScriptedModel`` whose script never runs out: each call gets ``responder``'s step."""

    def __init__(self, responder: ModelResponder) -> None:
        super().__init__()
        self.responder = responder

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        self.enqueue(ModelStep.respond(self.responder))
        return await super().get_response(*args, **kwargs)

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        self.enqueue(ModelStep.respond(self.responder))
        async for event in super().stream_response(*args, **kwargs):
            yield event


def usage_of(input_tokens: int, output_tokens: int, cached: int, reasoning: int) -> Usage:
    return Usage(
        requests=1,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=cached, cache_write_tokens=0),
        output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning),
    )


# What each agent's model reports per call: (input, output, cached, reasoning) tokens.
TRIAGE_USAGE = (100, 10, 60, 4)
BILLING_USAGE = (200, 20, 150, 8)


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def say(text: str, usage: tuple[int, int, int, int] = (10, 5, 0, 0)) -> ModelStep:
    return ModelStep(
        output=[assistant_message(text, item_id=_unique("msg"))], usage=usage_of(*usage)
    )


def call_tool(
    name: str, arguments: dict[str, Any], usage: tuple[int, int, int, int] = (10, 5, 0, 0)
) -> ModelStep:
    return ModelStep(
        output=[function_call(name, arguments, call_id=_unique("call"))], usage=usage_of(*usage)
    )


def last_tool_output(items: Any) -> tuple[str, str] | None:
    """(tool name, output) when the input ends with a tool's output: the model is being
    asked to go on after it; None when it ends with the user's message."""
    if isinstance(items, str) or not items:
        return None
    last = items[-1]
    if not isinstance(last, dict) or last.get("type") != "function_call_output":
        return None
    names = [
        str(i.get("name"))
        for i in items
        if isinstance(i, dict)
        and i.get("type") == "function_call"
        and i.get("call_id") == last.get("call_id")
    ]
    output = last.get("output")
    return (names[-1] if names else "?", output if isinstance(output, str) else str(output))


def context_report(context: Any) -> dict[str, Any]:
    """What a tool sees as its run context, as JSON (a TurnContext or a factory's object)."""
    fields = dataclasses.asdict(context) if dataclasses.is_dataclass(context) else {}
    return {"context": type(context).__name__, **fields}


@function_tool
def whoami(ctx: RunContextWrapper[Any]) -> str:
    """Who this turn serves, as the run context says."""
    return json.dumps(context_report(ctx.context), sort_keys=True)


@function_tool(needs_approval=True)
def refund(amount: int) -> str:
    """Refunds the customer (a human approves it first)."""
    return f"refunded {amount}"


async def _triage(call: ModelCall) -> ModelStepResult:
    text = _last_user_text(call.input)
    if "billing" in text.lower():
        target = next(h for h in call.handoffs if h.agent_name == "Billing")
        return call_tool(target.tool_name, {}, TRIAGE_USAGE)
    return say(f"triage: {text}", TRIAGE_USAGE)


async def _billing(call: ModelCall) -> ModelStepResult:
    done = last_tool_output(call.input)
    if done is not None and done[0] == "whoami":
        return say(f"billing: {done[1]}", BILLING_USAGE)
    text = _last_user_text(call.input)
    if "who am i" in text.lower():
        return call_tool("whoami", {}, BILLING_USAGE)
    return say(f"billing: {text}", BILLING_USAGE)


def triage_and_billing() -> tuple[Agent[Any], Agent[Any]]:
    billing = Agent[Any](
        name="Billing",
        handoff_description="Plans, invoices and refunds.",
        model=Replying(_billing),
        tools=[whoami, refund],
    )
    triage = Agent[Any](name="Triage", model=Replying(_triage), tools=[whoami], handoffs=[billing])
    return triage, billing


def support() -> Agent[Any]:
    """Two agents: Triage hands billing questions to Billing, whose ``whoami`` tool reports
    the run context (who the turn serves, the caller's metadata)."""
    return triage_and_billing()[0]


def _desks() -> dict[str, Agent[Any]]:
    triage, billing = triage_and_billing()
    return {"triage": triage, "billing": billing}


# A mapping deployment: two entry agents, "triage" (the default: first) and "billing".
DESKS = _desks()


@dataclass
class Account:
    """A deployment's own run context, built from turnq's by TURNQ_CONTEXT_FACTORY."""

    user_id: str
    account_id: str
    tier: str
    turn: TurnContext


async def account_context(turn: TurnContext) -> Account:
    """TURNQ_CONTEXT_FACTORY=tests.agents:account_context (async: awaited by the worker)."""
    return Account(
        turn.user_id, f"acct-{turn.user_id}", str(turn.metadata.get("tier", "basic")), turn
    )


# --- guardrails, max_turns, structured output, content parts, whole answers ------------


@input_guardrail(run_in_parallel=False)  # blocking: the model is not asked
async def no_blocked_words(
    ctx: RunContextWrapper[Any], agent: Agent[Any], input: Any
) -> GuardrailFunctionOutput:
    return GuardrailFunctionOutput(None, tripwire_triggered="[block-in]" in _last_user_text(input))


@output_guardrail
async def no_secret_out(
    ctx: RunContextWrapper[Any], agent: Agent[Any], output: Any
) -> GuardrailFunctionOutput:
    return GuardrailFunctionOutput(None, tripwire_triggered="SECRET" in str(output))


@tool_input_guardrail
def no_forbidden_query(data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
    if "forbidden" in data.context.tool_arguments:
        return ToolGuardrailFunctionOutput.raise_exception()
    return ToolGuardrailFunctionOutput.allow()


@tool_output_guardrail
def no_classified_result(data: ToolOutputGuardrailData) -> ToolGuardrailFunctionOutput:
    if "classified" in str(data.output):
        return ToolGuardrailFunctionOutput.raise_exception()
    return ToolGuardrailFunctionOutput.allow()


@function_tool(
    tool_input_guardrails=[no_forbidden_query], tool_output_guardrails=[no_classified_result]
)
def lookup(query: str) -> str:
    """Looks a query up."""
    return f"{query} files: 3 results"


async def _guarded(call: ModelCall) -> ModelStepResult:
    done = last_tool_output(call.input)
    if done is not None:
        return say(f"found: {done[1]}")
    text = _last_user_text(call.input)
    if "[leak]" in text:
        return say("the SECRET is 42")
    for marker, query in (("[tool-in]", "forbidden"), ("[tool-out]", "classified")):
        if marker in text:
            return call_tool("lookup", {"query": query})
    return say(f"ok: {text}")


@function_tool
def tick() -> str:
    """Advances the clock."""
    return "tock"


async def _looping(call: ModelCall) -> ModelStepResult:
    """Calls ``tick`` forever (max_turns ends it), unless the message says ``enough``."""
    if "enough" in _last_user_text(call.input):
        return say("stopped")
    return call_tool("tick", {})


class Verdict(BaseModel):
    answer: str
    confidence: float
    tags: list[str]


async def _structured(call: ModelCall) -> ModelStepResult:
    text = _last_user_text(call.input)
    verdict = {"answer": f"yes: {text}", "confidence": 0.75, "tags": ["a", "ü"]}
    return say(json.dumps(verdict, ensure_ascii=False))


class WholeModel(Model):
    """A user's model that only answers whole (``get_response``): ``[tool]`` in the message
    asks for ``tick`` first.  Subclasses write "not implemented" the ways users do."""

    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kw: Any
    ) -> ModelResponse:
        text = _last_user_text(input)
        step = (
            call_tool("tick", {})
            if "[tool]" in text and last_tool_output(input) is None
            else say(f"whole: {text} " + "word " * 40)
        )
        return ModelResponse(output=list(step.output), usage=step.usage, response_id=None)


class NotStreamingDef(WholeModel):
    def stream_response(self, *args: Any, **kw: Any) -> AsyncIterator[Any]:
        raise NotImplementedError


class NotStreamingAsyncDef(WholeModel):
    async def stream_response(self, *args: Any, **kw: Any) -> Any:  # a coroutine, not a stream
        raise NotImplementedError("answers whole only")


class NotStreamingGenerator(WholeModel):
    async def stream_response(self, *args: Any, **kw: Any) -> AsyncIterator[Any]:
        raise NotImplementedError
        yield  # an async generator that fails on first use


def features() -> dict[str, Agent[Any]]:
    """One agent per feature, as entry agents of one deployment (pick with agent=...)."""
    return {
        "guarded": Agent(
            name="guarded",
            model=Replying(_guarded),
            tools=[lookup],
            input_guardrails=[no_blocked_words],
            output_guardrails=[no_secret_out],
        ),
        "looping": Agent(name="looping", model=Replying(_looping), tools=[tick]),
        "structured": Agent(name="structured", model=Replying(_structured), output_type=Verdict),
        "plain": Agent(name="plain"),  # no model: the deployment's (the offline brain here)
        "whole-def": Agent(name="whole-def", model=NotStreamingDef(), tools=[tick]),
        "whole-async": Agent(name="whole-async", model=NotStreamingAsyncDef(), tools=[tick]),
        "whole-gen": Agent(name="whole-gen", model=NotStreamingGenerator(), tools=[tick]),
    }


# --- every model through the deployment's provider (TURNQ_OPENAI_BASE_URL: the stub) ----

REFUNDS_MODEL = "refunds-model-x"


async def _router(call: ModelCall) -> ModelStepResult:
    text = _last_user_text(call.input).lower()
    for word, agent in (("billing", "Billing"), ("refund", "Refunds")):
        if word in text:
            target = next(h for h in call.handoffs if h.agent_name == agent)
            return call_tool(target.tool_name, {})
    return say(f"router: {text}")


def routed() -> Agent[Any]:
    """Router (its own model object) hands over to Billing, which has no model, or to
    Refunds, which names one by string: both must be served by turnq's provider."""
    billing = Agent[Any](name="Billing", instructions="You handle billing.")
    refunds = Agent[Any](name="Refunds", instructions="You handle refunds.", model=REFUNDS_MODEL)
    return Agent(name="Router", model=Replying(_router), handoffs=[billing, refunds])


# --- human approvals (tests/system/test_approvals.py) ---------------------------------

# Per agent (the agent module's setting, read by the beat reaper): "expiring"'s calls time
# out after 2 s; every other agent keeps the deployment's TURNQ_APPROVAL_TTL_S.
TURNQ_APPROVAL_TTL_S = {"expiring": 2}


def _since_user(items: Any) -> list[dict[str, Any]]:
    """The items after the last user message (what this turn did so far)."""
    if isinstance(items, str):
        return []
    tail: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, dict) and item.get("role") == "user":
            tail = []
        elif isinstance(item, dict):
            tail.append(item)
    return tail


def log_input(text: str, items: Any) -> None:
    """One line per model call (its message and the whole input, JSON) in
    ``TEST_INPUT_LOG``, if set: a test reads what the model was shown, across processes."""
    path = os.environ.get("TEST_INPUT_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"text": text, "input": items}, default=str) + "\n")


def _gated_call(tool: str, text: str) -> Any:
    return function_call(tool, {"order": text[-8:]}, call_id=f"call_{uuid.uuid4().hex}")


async def _gate(call: ModelCall) -> ModelStepResult:
    """``[two]``: charge and ship in one response (two approvals); ``[one]``: charge;
    ``[twice]``: charge, then (once it ran or was refused) ship -- a second pause.  When
    the calls are answered: ``done: <message> | <each tool output>``.  Anything else:
    ``ok: <message> [ctx=<items it saw>]``."""
    text = _last_user_text(call.input)
    log_input(text, call.input)
    outputs = [
        str(i.get("output"))
        for i in _since_user(call.input)
        if i.get("type") == "function_call_output"
    ]
    if "[two]" in text and not outputs:
        return [_gated_call("charge", text), _gated_call("ship", text)]
    if ("[one]" in text or "[twice]" in text) and not outputs:
        return [_gated_call("charge", text)]
    if "[twice]" in text and len(outputs) == 1:
        return [_gated_call("ship", text)]
    item_id = f"msg_{uuid.uuid4().hex}"
    if outputs:
        return [assistant_message(f"done: {text} | {' | '.join(outputs)}", item_id=item_id)]
    n = 1 if isinstance(call.input, str) else len(call.input)
    return [assistant_message(f"ok: {text} [ctx={n}]", item_id=item_id)]


def side_effect(tool: str, ctx: RunContextWrapper[Any]) -> None:
    """What a gated tool did, one JSON line per run in ``TEST_SIDE_EFFECTS`` (an O_APPEND
    write: lines of concurrent runs never interleave), so a test counts runs across
    processes."""
    path = os.environ.get("TEST_SIDE_EFFECTS")
    if path:
        line = json.dumps({"tool": tool, "turn_id": getattr(ctx.context, "turn_id", None)})
        with open(path, "a", encoding="utf-8") as log:
            log.write(line + "\n")


@function_tool(needs_approval=True)
def charge(ctx: RunContextWrapper[Any], order: str) -> str:
    """Charges the customer's card for the order; a person approves it first."""
    side_effect("charge", ctx)
    return f"charged order {order}"


@function_tool(needs_approval=True)
def ship(ctx: RunContextWrapper[Any], order: str) -> str:
    """Ships the order; a person approves it first."""
    side_effect("ship", ctx)
    return f"shipped order {order}"


def approvals() -> dict[str, Agent[Any]]:
    """Two entry agents with the same approval-gated tools: ``gated`` (the default; the
    deployment's approval TTL) and ``expiring`` (2 s: ``TURNQ_APPROVAL_TTL_S`` above)."""
    return {
        name: Agent(name=name, model=RespondingModel(_gate), tools=[charge, ship])
        for name in ("gated", "expiring")
    }
