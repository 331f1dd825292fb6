"""Summarizers: extractive (offline default), a model via agents, validation, loading."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from agents import RunConfig, Runner
from agents.testing import ModelStep, ScriptedModel, assistant_message

from shared.compaction.base import Item, SummaryError
from shared.compaction.model_summarizer import (
    AgentSummarizer,
    ValidatedSummarizer,
    load_summarizer,
    validated,
)
from shared.compaction.summarizers import ExtractiveSummarizer, render_items
from shared.demo_agent import build_agent
from shared.models.offline import OfflineModel
from shared.sdk_session import summary_item
from shared.settings import Settings
from shared.tokens import HeuristicEstimator
from tests.unit.test_compaction_turns import assistant, call, output, user

EXTRACT = ExtractiveSummarizer()


def summarize(previous: str | None, evicted: Sequence[Item], max_tokens: int = 1_000) -> str:
    return asyncio.run(validated(EXTRACT)(previous, evicted, max_tokens=max_tokens))


def section(summary: str, name: str) -> list[str]:
    lines = summary.splitlines()
    if name not in lines:
        return []
    out = []
    for line in lines[lines.index(name) + 1 :]:
        if not line.startswith(("- ", "  ")):
            break
        out.append(line[2:])
    return out


EVICTED = [
    user("Hi! My name is Ada. The door code is 4417."),
    assistant("Got it: your name is Ada."),
    user("My order id is A-1234, mail me at ada@example.com or see https://ex.am/ple?x=1 ."),
    assistant("Noted."),
    user("What is the weather in Austin?"),
    call("c1"),
    output("c1", "Austin: 31°C, sunny"),
    assistant("The weather in Austin is 31°C and sunny."),
    user("What is my account balance?"),
    assistant("I don't know your account balance yet."),
    user("Tell me about the history of Rome, I find it fascinating."),
    assistant("Rome was founded..."),
]


# --- extractive ---------------------------------------------------------------------------


def test_extractive_keeps_facts_tool_results_open_questions_and_topics() -> None:
    summary = summarize(None, EVICTED)
    assert section(summary, "User facts:") == [
        "My name is Ada.",
        "The door code is 4417.",
        "My order id is A-1234, mail me at ada@example.com or see https://ex.am/ple?x=1 .",
    ]
    assert section(summary, "Tool results:") == [
        'get_weather({"city": "Austin"}) -> Austin: 31°C, sunny'
    ]
    assert section(summary, "Open questions:") == ["What is my account balance?"]
    assert section(summary, "Earlier topics:") == [
        "Hi!",
        "What is the weather in Austin?",
        "Tell me about the history of Rome, I find it fascinating.",
    ]
    assert summarize(None, EVICTED) == summary  # deterministic


def test_a_later_statement_of_the_same_fact_replaces_the_earlier_one() -> None:
    first = summarize(None, [user("My name is Ada. I live in Paris."), assistant("ok")])
    second = summarize(first, [user("Call me Grace."), assistant("ok")])
    third = summarize(second, [user("I now live in Rome, and my cat is called Tom.")])
    facts = section(third, "User facts:")
    assert facts == [
        "My name is Grace; the user said: Call me Grace.",
        "I now live in Rome, and my cat is called Tom.",
    ]


def test_the_summary_is_incremental_and_parses_back_unchanged() -> None:
    once = summarize(None, EVICTED)
    assert summarize(once, []) == once
    more = summarize(once, [user("My badge number is 77."), assistant("ok")])
    assert section(more, "User facts:")[:3] == section(once, "User facts:")
    assert section(more, "User facts:")[-1] == "My badge number is 77."


def test_multiline_tool_output_survives_the_round_trip() -> None:
    summary = summarize(None, [user("run it"), call("c", "shell", "{}"), output("c", "a\nb\n")])
    assert section(summary, "Tool results:") == ["shell({}) -> a", "b"]
    assert summarize(summary, []) == summary


def test_free_text_from_another_summarizer_is_kept() -> None:
    summary = summarize("The user is Ada; she likes tea.", [user("What time is it?")])
    assert summary.startswith("Earlier summary:\n- The user is Ada; she likes tea.")


def test_the_cap_drops_topics_then_tool_results_then_facts_oldest_first() -> None:
    turns: list[Item] = [user("My name is Ada."), user("The door code is 4417.")]
    for i in range(40):
        turns += [user(f"Tell me a long story about dragon number {'x' * 40} please {i}?")]
        turns += [call(f"c{i}", args=f'{{"city": "Town {i}"}}'), output(f"c{i}", f"T{i}: 20°C")]
    full = summarize(None, turns, max_tokens=100_000)
    assert len(section(full, "Earlier topics:")) == 40
    est = HeuristicEstimator()
    for budget in (1500, 600, 250, 40):
        capped = summarize(None, turns, max_tokens=budget)
        assert est.count_text(capped) <= budget
        tools, topics = section(capped, "Tool results:"), section(capped, "Earlier topics:")
        if topics:  # topics are dropped first, so every tool result is still there
            assert len(tools) == 40 and topics[-1] == section(full, "Earlier topics:")[-1]
        if len(tools) < 40:
            assert not topics
        if tools:
            assert tools[-1] == section(full, "Tool results:")[-1]
        assert "My name is Ada." in section(capped, "User facts:")
    tiny = summarize(None, turns, max_tokens=12)
    assert section(tiny, "User facts:") == ["The door code is 4417."]


def test_number_only_facts_go_before_stated_facts() -> None:
    facts = [user("My name is Ada.")] + [user(f"I walked {i} km.") for i in range(30)]
    capped = summarize(None, facts, max_tokens=40)
    assert section(capped, "User facts:")[0] == "My name is Ada."


def test_nothing_to_keep_still_gives_a_non_empty_summary() -> None:
    summary = summarize(None, [assistant("unprompted"), call("c"), output("c")])
    assert summary.strip()


def _fact_answer(summary: str, question: str) -> str:
    async def main() -> str:
        items: list[Any] = [summary_item(summary), user(question)]
        config = RunConfig(model=OfflineModel(), tracing_disabled=True)
        result = await Runner.run(build_agent(), items, run_config=config)
        return str(result.final_output)

    return asyncio.run(main())


def test_the_offline_brain_recalls_facts_from_many_incremental_summaries() -> None:
    summary: str | None = None
    chunks: list[list[Item]] = [EVICTED]
    chunks += [
        [user(f"Let us chat about topic {n}, it is very interesting."), assistant("Noted.")]
        for n in range(60)
    ]
    chunks.append([user("Call me Grace."), assistant("Got it: your name is Grace.")])
    chunks += [[user(f"Another thing, item {n}."), assistant("Noted.")] for n in range(60)]
    for chunk in chunks:
        summary = summarize(summary, chunk, max_tokens=300)
    assert summary is not None
    assert _fact_answer(summary, "What is my name?") == "Your name is Grace."
    assert _fact_answer(summary, "What is the door code?") == "The door code is 4417."
    assert _fact_answer(summary, "What is my order id?") == "Your order id is A-1234."


# --- validation ---------------------------------------------------------------------------


class Fixed:
    def __init__(self, text: Any = None, error: Exception | None = None) -> None:
        self.text, self.error = text, error

    async def __call__(
        self, previous: str | None, evicted: Sequence[Item], *, max_tokens: int
    ) -> str:
        if self.error is not None:
            raise self.error
        return self.text  # type: ignore[no-any-return]


def check(text: Any, evicted: Sequence[Item] = (), max_tokens: int = 100) -> str:
    return asyncio.run(validated(Fixed(text))(None, evicted, max_tokens=max_tokens))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   \n",
        None,
        "Error code: 429 - {'error': {'message': 'Rate limit reached'}}",
        "error: the model is overloaded",
        "Traceback (most recent call last):\n  File ...",
        "{'error': {'message': 'bad'}}",
        "Sorry, you exceeded your quota.",
        "The server had an Internal Server Error.",
        "x" * 4 * 150,  # 150 tokens >= 1.5 x 100
    ],
)
def test_validated_refuses_what_must_not_be_committed(bad: Any) -> None:
    with pytest.raises(SummaryError):
        check(bad)


def test_validated_accepts_a_conversation_that_is_about_rate_limits() -> None:
    evicted = [user("My API keeps hitting the rate limit, what can I do?")]
    assert check("Earlier topics:\n- The user's API hits the rate limit.", evicted)
    assert check("x" * 4 * 149) == "x" * 4 * 149


def test_a_failing_summarizer_raises_summary_error() -> None:
    boom = validated(Fixed(error=RuntimeError("connection reset")))
    with pytest.raises(SummaryError, match="connection reset"):
        asyncio.run(boom(None, [], max_tokens=10))
    assert validated(boom) is boom


# --- a model as summarizer ----------------------------------------------------------------


def test_agent_summarizer_sends_previous_summary_and_evicted_text() -> None:
    model = ScriptedModel([[assistant_message("User facts:\n- My name is Ada.")]])
    summary = asyncio.run(AgentSummarizer(model)("Earlier: hi", EVICTED[:4], max_tokens=200))
    assert summary == "User facts:\n- My name is Ada."
    model.assert_complete()
    last = model.last_call
    assert last is not None
    sent = str(last.input)
    assert "Earlier: hi" in sent and "user: Hi! My name is Ada." in sent
    assert "A-1234" in sent and "200 tokens" in sent
    assert "Copy identifiers exactly as written" in str(last.system_instructions)


def test_agent_summarizer_folds_long_evictions_in_chunks() -> None:
    model = ScriptedModel(
        [[assistant_message("first")], [assistant_message("second")], [assistant_message("third")]]
    )
    evicted = [user("x" * 400) for _ in range(6)]
    summarizer = AgentSummarizer(model, max_input_tokens=250)
    assert asyncio.run(summarizer(None, evicted, max_tokens=50)) == "third"
    assert "first" not in str(model.calls[0].input) and "first" in str(model.calls[1].input)
    assert "second" in str(model.calls[2].input)


def test_a_failed_intermediate_chunk_stops_the_fold() -> None:
    model = ScriptedModel([[assistant_message("Error: upstream timed out")]])
    evicted = [user("x" * 400) for _ in range(6)]
    with pytest.raises(SummaryError, match="error"):
        asyncio.run(AgentSummarizer(model, max_input_tokens=250)(None, evicted, max_tokens=50))
    assert len(model.calls) == 1  # the error text was not folded into the next chunk


def test_one_huge_message_is_shortened_to_the_summarizers_input_budget() -> None:
    model = ScriptedModel([[assistant_message("short")]])
    huge = [user("東京" * 20_000 + " the end")]
    asyncio.run(AgentSummarizer(model, max_input_tokens=1_000)(None, huge, max_tokens=50))
    last = model.last_call
    assert last is not None
    sent = str(last.input)
    assert "[... truncated " in sent and "the end" in sent
    assert HeuristicEstimator().count_text(sent) < 1_300  # budget plus the prompt around it


def test_agent_summarizer_turns_model_failure_into_summary_error() -> None:
    model = ScriptedModel([ModelStep.raise_error(RuntimeError("429 Too Many Requests"))])
    with pytest.raises(SummaryError, match="429"):
        asyncio.run(AgentSummarizer(model)(None, EVICTED, max_tokens=100))


def test_render_items_is_plain_text_with_tool_results_inline() -> None:
    lines = render_items(EVICTED[4:8])
    assert lines == [
        "user: What is the weather in Austin?",
        'tool call get_weather({"city": "Austin"}) -> Austin: 31°C, sunny',
        "assistant: The weather in Austin is 31°C and sunny.",
    ]


# --- loading ------------------------------------------------------------------------------


async def plain_function(previous: str | None, evicted: Sequence[Item], *, max_tokens: int) -> str:
    return "from a function"


def factory() -> ExtractiveSummarizer:
    return ExtractiveSummarizer(max_tool_chars=10)


INSTANCE = Fixed("an instance")


def _inner(s: Any) -> Any:
    assert isinstance(s, ValidatedSummarizer)
    return s.inner


def test_load_summarizer_by_name_and_import_path() -> None:
    offline = Settings(model_provider="offline")
    assert isinstance(_inner(load_summarizer("auto", offline)), ExtractiveSummarizer)
    assert isinstance(_inner(load_summarizer("extractive", offline)), ExtractiveSummarizer)
    agent = _inner(load_summarizer("agent", offline))
    assert isinstance(agent, AgentSummarizer) and isinstance(agent.model, OfflineModel)
    online = Settings(model_provider="openai", openai_api_key="sk-test", summarizer_model="tiny")
    agent = _inner(load_summarizer("auto", online))
    assert isinstance(agent, AgentSummarizer) and getattr(agent.model, "model", None) == "tiny"
    here = "tests.unit.test_summarizers"
    assert _inner(load_summarizer(f"{here}:INSTANCE", offline)) is INSTANCE
    assert _inner(load_summarizer(f"{here}:plain_function", offline)) is plain_function
    assert _inner(load_summarizer(f"{here}:factory", offline)).max_tool_chars == 10
    assert isinstance(_inner(load_summarizer(f"{here}:Fixed", offline)), Fixed)
    for bad in ("nope", f"{here}:missing", "no.such.module:x"):
        with pytest.raises(ValueError):
            load_summarizer(bad, offline)
