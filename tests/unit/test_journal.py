"""The step journal's worker side without services (workers/journal.py, workers/models.py):
which tools are idempotent, the idempotency key, tool calls and model calls replayed from
the journal instead of run again, and what a tool's output is stored as.

The journal's writer here is a list; its Postgres half (fencing, append-only, expiry) is
tests/service/test_journal_store.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from agents import FunctionTool, Model, ModelResponse, function_tool
from agents.usage import Usage
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from pydantic import BaseModel

from shared.models.offline import response_stream_events
from shared.run_context import TurnContext, idempotency_key, idempotent, non_idempotent
from workers.journal import (
    UNKNOWN_OUTCOME,
    Journal,
    JournalUnavailable,
    _journaled,
    _jsonable,
    is_idempotent,
)
from workers.models import TurnqModel, TurnScope, _response_of, turn_scope
from workers.retry import RetryPolicy

Write = tuple[str, str, str, Any]


def recording_journal(steps: list[Write] | None = None) -> tuple[Journal, list[Write]]:
    """A journal whose writes land in a list; ``steps`` are what an earlier run journaled."""
    written: list[Write] = []

    async def write(kind: str, key: str, state: str, payload: Any) -> None:
        written.append((kind, key, state, payload))

    journal = Journal(write)
    for kind, key, state, payload in steps or []:
        journal.steps[(kind, key)] = {"kind": kind, "key": key, "state": state, "payload": payload}
    return journal, written


# ------------------------------------------------------------------ which tools run once
def _plain() -> FunctionTool:
    @function_tool
    def lookup(q: str) -> str:
        """Looks something up."""
        return q

    return lookup


def _approved() -> FunctionTool:
    @function_tool(needs_approval=True)
    def pay(amount: int) -> str:
        """Pays."""
        return str(amount)

    return pay


def _approved_sometimes() -> FunctionTool:
    async def big(_ctx: Any, params: dict[str, Any], _call_id: str) -> bool:
        return bool(params.get("amount", 0) > 100)

    @function_tool(needs_approval=big)
    def pay_some(amount: int) -> str:
        """Pays, asking a person above 100."""
        return str(amount)

    return pay_some


NONE: frozenset[str] = frozenset()


def test_a_plain_tool_is_idempotent_and_one_that_needs_approval_is_not() -> None:
    assert is_idempotent(_plain(), NONE) is True
    assert is_idempotent(_approved(), NONE) is False
    # a needs_approval function may ask for some calls: the tool acts on the world
    assert is_idempotent(_approved_sometimes(), NONE) is False


def test_the_agent_modules_list_makes_a_tool_non_idempotent() -> None:
    assert is_idempotent(_plain(), frozenset({"lookup"})) is False
    assert is_idempotent(_plain(), frozenset({"other"})) is True


def test_the_decorator_wins_over_the_list_and_over_the_approval_rule() -> None:
    assert is_idempotent(idempotent(_approved()), NONE) is True
    assert is_idempotent(idempotent(_plain()), frozenset({"lookup"})) is True
    assert is_idempotent(non_idempotent(_plain()), NONE) is False


# ------------------------------------------------------------------ idempotency keys
def _context(turn_id: str, attempt: int) -> TurnContext:
    return TurnContext("u", "s", turn_id, 1, attempt, "entry", "Assistant")


def test_idempotency_key_is_turn_and_call_and_the_same_on_every_attempt() -> None:
    first, again = _context("t-1", 1), _context("t-1", 3)
    assert first.idempotency_key("call_9") == "t-1:call_9" == idempotency_key("t-1", "call_9")
    assert again.idempotency_key("call_9") == first.idempotency_key("call_9")
    assert _context("t-2", 1).idempotency_key("call_9") != first.idempotency_key("call_9")
    assert first.idempotency_key("call_8") != first.idempotency_key("call_9")


# ------------------------------------------------------------------ tool calls
@dataclass
class CountingTool:
    runs: int = 0
    seen_started: bool | None = None  # was the call journaled ``started`` when it ran?
    journal: Journal | None = None

    async def __call__(self, ctx: Any, arguments: str) -> Any:
        self.runs += 1
        if self.journal is not None:
            step = self.journal.tool(ctx.tool_call_id)
            self.seen_started = step is not None and step["state"] == "started"
        return {"echo": arguments}


def _wrapped(tool: CountingTool, journal: Journal | None, once: bool) -> Callable[..., Any]:
    scope = SimpleNamespace(journal=journal)
    return _journaled(tool, once, "t", lambda: scope)


def _call(invoke: Callable[..., Any], call_id: str = "call_1") -> Any:
    return asyncio.run(invoke(SimpleNamespace(tool_call_id=call_id), '{"x": 1}'))


def test_an_idempotent_tool_journals_its_output_only() -> None:
    journal, written = recording_journal()
    tool = CountingTool(journal=journal)
    assert _call(_wrapped(tool, journal, once=False)) == {"echo": '{"x": 1}'}
    assert tool.runs == 1 and tool.seen_started is False
    assert written == [("tool", "call_1", "done", {"output": {"echo": '{"x": 1}'}})]


def test_a_non_idempotent_tool_is_journaled_started_before_it_runs() -> None:
    journal, written = recording_journal()
    tool = CountingTool(journal=journal)
    _call(_wrapped(tool, journal, once=True))
    assert tool.seen_started is True
    assert [(k, key, state) for k, key, state, _ in written] == [
        ("tool", "call_1", "started"),
        ("tool", "call_1", "done"),
    ]
    assert written[0][3] == {"arguments": '{"x": 1}', "approved": False}


@pytest.mark.parametrize("once", [False, True])
def test_a_journaled_output_is_returned_without_running_the_tool(once: bool) -> None:
    journal, written = recording_journal([("tool", "call_1", "done", {"output": "before"})])
    tool = CountingTool()
    assert _call(_wrapped(tool, journal, once)) == "before"
    assert tool.runs == 0 and written == [] and journal.replayed_tools == 1


def test_a_non_idempotent_tool_started_before_a_crash_is_not_run_again() -> None:
    journal, written = recording_journal([("tool", "call_1", "started", {"arguments": "{}"})])
    tool = CountingTool()
    assert _call(_wrapped(tool, journal, once=True)) == UNKNOWN_OUTCOME
    assert tool.runs == 0 and written == [] and journal.unknown == 1


def test_a_started_non_idempotent_tool_runs_again_once_a_person_approved_it() -> None:
    journal, written = recording_journal([("tool", "call_1", "started", {"arguments": "{}"})])
    journal.approved = {"call_1"}
    tool = CountingTool()
    assert _call(_wrapped(tool, journal, once=True)) == {"echo": '{"x": 1}'}
    assert tool.runs == 1 and [w[2] for w in written] == ["started", "done"]


def test_a_started_idempotent_tool_runs_again() -> None:
    """Only non-idempotent tools are journaled ``started``; should a row say so anyway
    (the tool's marking changed between deployments), an idempotent tool simply runs."""
    journal, _ = recording_journal([("tool", "call_1", "started", {"arguments": "{}"})])
    tool = CountingTool()
    _call(_wrapped(tool, journal, once=False))
    assert tool.runs == 1


def test_without_a_journal_the_tool_just_runs() -> None:
    tool = CountingTool()
    assert _call(_wrapped(tool, None, once=True)) == {"echo": '{"x": 1}'}
    assert tool.runs == 1


def test_a_journal_that_cannot_be_written_stops_the_run_before_the_tool_runs() -> None:
    async def broken(*_: Any) -> None:
        raise OSError("connection refused")

    tool = CountingTool()
    with pytest.raises(JournalUnavailable):
        _call(_wrapped(tool, Journal(broken), once=True))
    assert tool.runs == 0


# ------------------------------------------------------------------ model calls
def _answer(call_id: str) -> ModelResponse:
    usage = Usage(
        requests=1,
        input_tokens=40,
        output_tokens=7,
        total_tokens=47,
        input_tokens_details=InputTokensDetails(cached_tokens=12, cache_write_tokens=0),
        output_tokens_details=OutputTokensDetails(reasoning_tokens=3),
    )
    output = [
        ResponseOutputMessage(
            id="msg_1", type="message", role="assistant", status="completed",
            content=[ResponseOutputText(type="output_text", text="Let me look.", annotations=[])],
        ),
        ResponseFunctionToolCall(
            id="fc_1", type="function_call", call_id=call_id, name="get_weather",
            arguments='{"city": "Austin"}', status="completed",
        ),
    ]  # fmt: skip
    return ModelResponse(output=output, usage=usage, response_id="resp_1")


class FakeModel(Model):
    """Answers every call with a new call id and counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        self.calls += 1
        return _answer(f"call_{self.calls}")

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        self.calls += 1
        for event in response_stream_events(_response_of(_answer(f"call_{self.calls}"))):
            yield event


NO_RETRIES = RetryPolicy(0, 0.0, 0.0, 0.0)


def _dump(answer: ModelResponse) -> list[dict[str, Any]]:
    return [i.model_dump(mode="json", exclude_none=True) for i in answer.output]


async def _get(model: TurnqModel, journal: Journal | None) -> ModelResponse:
    with turn_scope(TurnScope(NO_RETRIES, journal=journal)):
        return await model.get_response()


async def _stream(model: TurnqModel, journal: Journal, seen: Callable[[Any], None]) -> None:
    with turn_scope(TurnScope(NO_RETRIES, journal=journal)):
        async for event in model.stream_response():
            seen(event)


def test_a_journaled_model_response_is_replayed_without_calling_the_model() -> None:
    async def run() -> None:
        inner = FakeModel()
        first, written = recording_journal()
        live = await _get(TurnqModel(inner), first)
        assert inner.calls == 1 and [w[:3] for w in written] == [("model", "0", "done")]
        # the turn runs again after a crash: a new journal from what was written
        again, rewritten = recording_journal(written)
        replayed = await _get(TurnqModel(inner), again)
        assert inner.calls == 1 and rewritten == []  # not asked, nothing written again
        assert _dump(replayed) == _dump(live)  # same items, the same call id
        assert replayed.output[1].call_id == "call_1"  # type: ignore[union-attr]
        assert replayed.response_id == "resp_1"
        assert (replayed.usage.input_tokens, replayed.usage.output_tokens) == (40, 7)
        assert replayed.usage.input_tokens_details.cached_tokens == 12
        assert replayed.usage.output_tokens_details.reasoning_tokens == 3
        assert again.replayed_models == 1 and again.replayed_calls == {"call_1"}
        # the run goes on live from the first call that is not journaled
        nxt = await _get(TurnqModel(inner), again)
        assert inner.calls == 2 and nxt.output[1].call_id == "call_2"  # type: ignore[union-attr]
        assert [w[:3] for w in rewritten] == [("model", "1", "done")]

    asyncio.run(run())


def test_without_a_journal_every_model_call_is_live() -> None:
    async def run() -> None:
        inner = FakeModel()
        await _get(TurnqModel(inner), None)
        await _get(TurnqModel(inner), None)
        assert inner.calls == 2

    asyncio.run(run())


def test_a_streamed_response_is_journaled_before_the_runner_sees_it_complete() -> None:
    async def run() -> None:
        inner = FakeModel()
        journal, written = recording_journal()
        at_completion: list[int] = []

        def seen(event: Any) -> None:
            if isinstance(event, ResponseCompletedEvent):
                at_completion.append(len(written))

        await _stream(TurnqModel(inner), journal, seen)
        assert at_completion == [1] and written[0][:3] == ("model", "0", "done")
        # replayed as a stream: created then completed, no text deltas, the same items
        again, rewritten = recording_journal(written)
        events: list[Any] = []
        await _stream(TurnqModel(inner), again, events.append)
        assert inner.calls == 1 and rewritten == []
        assert [e.type for e in events] == ["response.created", "response.completed"]
        completed = events[-1].response
        assert [i.model_dump(mode="json", exclude_none=True) for i in completed.output] == (
            written[0][3]["output"]
        )
        assert completed.output[1].call_id == "call_1"

    asyncio.run(run())


# ------------------------------------------------------------------ stored outputs
class Weather(BaseModel):
    city: str
    celsius: float


def test_jsonable_keeps_json_values_dumps_models_and_stringifies_the_rest() -> None:
    assert _jsonable("Austin: 31°C") == "Austin: 31°C"
    assert _jsonable({"a": [1, 2.5, None, True]}) == {"a": [1, 2.5, None, True]}
    assert _jsonable(Weather(city="Austin", celsius=31)) == {"city": "Austin", "celsius": 31.0}
    assert _jsonable({1, 2}) in ("{1, 2}", "{2, 1}")
    assert _jsonable({"when": object}) == "{'when': <class 'object'>}"  # whole, as a string


@pytest.mark.parametrize("output", [float("nan"), {"ratio": float("inf")}, [float("-inf")]])
def test_jsonable_gives_json_that_jsonb_accepts(output: Any) -> None:
    """Postgres's jsonb holds no NaN or Infinity: a tool output with one is stored as its
    string, else its journal write fails on every attempt of the turn.  (NUL characters,
    which jsonb cannot hold either, are the store's: tests/service/test_journal_store.py.)"""
    assert json.dumps(_jsonable(output), allow_nan=False) == json.dumps(str(output))
