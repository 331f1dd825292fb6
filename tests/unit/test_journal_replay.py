"""The step journal's pure parts: what a replayed model response gives back, what is
stored of a payload Postgres cannot hold, how a stale holder's refusal is found."""

from __future__ import annotations

import json
from typing import Any

from agents import ModelResponse, UserError
from agents.testing import assistant_message, function_call
from openai.types.responses import ResponseCompletedEvent, ResponseReasoningItem
from openai.types.responses.response_reasoning_item import Summary

from shared.errors import Fenced
from shared.store.worker import nul_safe
from tests.agents import usage_of
from workers.execute import _infrastructure
from workers.journal import Journal
from workers.models import _answer_of, _response_of, journaled, replay_events, replayed


async def _nowhere(*_: Any) -> None:
    return None


def _answer() -> ModelResponse:
    reasoning = ResponseReasoningItem(
        id="rs_1", type="reasoning", summary=[Summary(text="think", type="summary_text")]
    )
    return ModelResponse(
        output=[
            reasoning,
            assistant_message("step 0 — ünïcode", item_id="msg_1"),
            function_call("note", {"name": "a"}, call_id="call_1"),
        ],
        usage=usage_of(120, 30, 80, 7),
        response_id="resp_1",
    )


def _stored(answer: ModelResponse) -> dict[str, Any]:
    """As Postgres gives it back: through JSON."""
    payload: dict[str, Any] = json.loads(json.dumps(journaled(answer)))
    return payload


def test_a_replayed_response_gives_the_same_items_usage_and_id() -> None:
    answer = _answer()
    again = replayed(Journal(_nowhere), _stored(answer))
    assert [i.model_dump() for i in again.output] == [i.model_dump() for i in answer.output]
    assert again.usage == answer.usage
    assert again.response_id == answer.response_id


def test_a_streamed_response_replays_as_it_completed() -> None:
    """Journaled from the stream's completed event, replayed as created + completed: the
    runner sees the same response (items, usage) as it did live."""
    live = _answer_of(ResponseCompletedEvent(
        type="response.completed", response=_response_of(_answer()), sequence_number=9
    ))  # fmt: skip
    journal = Journal(_nowhere)
    events = list(replay_events(replayed(journal, _stored(live))))
    assert [e.type for e in events] == ["response.created", "response.completed"]
    completed = events[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    assert completed.response.output == live.output
    assert completed.response.usage == _response_of(live).usage
    assert journal.replayed_calls == {"call_1"}


def test_nul_characters_become_the_replacement_character_everywhere() -> None:
    value = {"output": "a\x00b", "list": ["\x00"], "k\x00": 1, "n": None}
    assert nul_safe(value) == {"output": "a\ufffdb", "list": ["\ufffd"], "k\ufffd": 1, "n": None}


def test_a_fenced_write_inside_a_tool_is_found_under_the_sdk_wrapper() -> None:
    """The SDK raises ``UserError('Error running tool ...') from`` what the tool raised; the
    drain must get the Fenced itself to stop as fenced out (not 'drain failed')."""
    fenced = Fenced("fence 3 is stale")
    try:
        try:
            raise fenced
        except Fenced as exc:
            raise UserError(f"Error running tool note: {exc}") from exc
    except UserError as wrapped:
        assert _infrastructure(wrapped) is fenced
    assert _infrastructure(UserError("a tool's own error")) is None
