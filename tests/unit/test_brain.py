"""The brain's rules on plain items, plus the seed conversation through the real runner."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner

from shared.demo_agent import build_agent, weather_report
from shared.models.brain import (
    ToolSpec,
    estimate_tokens,
    extract_entities,
    recall,
    think,
    tool_topics,
)
from shared.models.offline import OfflineModel

WEATHER = ToolSpec(
    "get_weather",
    "Get the current weather for a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
STOCK = ToolSpec(
    "lookup_stock_price",
    "Price of a ticker.",
    {"type": "object", "properties": {"ticker": {"type": "string"}}, "required": ["ticker"]},
)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text}],
    }


def call(call_id: str, city: str) -> dict[str, Any]:
    args = json.dumps({"city": city})
    return {"type": "function_call", "call_id": call_id, "name": "get_weather", "arguments": args}


def output(call_id: str, city: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": weather_report(city)}


def weather_turn(question: str, city: str, call_id: str) -> list[dict[str, Any]]:
    return [user(question), call(call_id, city), output(call_id, city), assistant("...")]


# --- tool selection ----------------------------------------------------------------


def test_topic_comes_from_the_tool_name_not_generic_description_words() -> None:
    assert tool_topics(WEATHER) == {"weather"}
    assert tool_topics(STOCK) == {"stock", "price"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What is the weather in Austin?", ["Austin"]),
        ("How about Seattle?", ["Seattle"]),
        ("And in Paris?", ["Paris"]),
        ("What about New York?", ["New York"]),
        ("Weather in Austin and Seattle please", ["Austin", "Seattle"]),
        ("weather in san francisco?", ["San Francisco"]),
        ("Which city is warmer?", []),
    ],
)
def test_entities_skip_sentence_initial_stop_words(text: str, expected: list[str]) -> None:
    assert extract_entities(text, extra_stop={"weather"}) == expected


def test_topic_word_calls_the_tool_with_the_entity() -> None:
    reply = think(None, [user("What is the weather in Austin?")], [WEATHER, STOCK])
    assert reply.text is None
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [
        ("get_weather", {"city": "Austin"})
    ]


def test_two_entities_make_two_calls_in_one_response() -> None:
    reply = think(None, [user("What's the weather in Paris and London?")], [WEATHER])
    assert [c.arguments["city"] for c in reply.tool_calls] == ["Paris", "London"]


def test_follow_up_reuses_the_previous_turns_tool() -> None:
    items = [
        *weather_turn("What is the weather in Austin?", "Austin", "c1"),
        user("How about Seattle?"),
    ]
    reply = think(None, items, [WEATHER, STOCK])
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [
        ("get_weather", {"city": "Seattle"})
    ]


def test_follow_up_without_an_earlier_tool_turn_is_just_noted() -> None:
    reply = think(None, [user("hi"), assistant("Noted: hi"), user("How about Seattle?")], [WEATHER])
    assert reply.tool_calls == ()
    assert reply.text == "Noted: How about Seattle?"


def test_topic_without_entity_asks_for_the_parameter() -> None:
    reply = think(None, [user("what's the weather like?")], [WEATHER])
    assert reply.text == "Which city do you want the weather for?"


def test_no_tools_means_no_calls() -> None:
    assert think(None, [user("What is the weather in Austin?")], []).tool_calls == ()


# --- answering from tool results ---------------------------------------------------------


def test_answers_from_the_tool_output_of_this_turn() -> None:
    items = weather_turn("What is the weather in Austin?", "Austin", "c1")[:3]
    assert think(None, items, [WEATHER]).text == "The weather in Austin is 31°C and sunny."


def test_restates_every_output_of_a_parallel_call() -> None:
    items = [user("Weather in Paris and London?"), call("a", "Paris"), call("b", "London")]
    items += [output("a", "Paris"), output("b", "London")]
    assert think(None, items, [WEATHER]).text == (
        "The weather in Paris is 21°C and sunny. The weather in London is 12°C and overcast."
    )


def test_unstructured_output_is_quoted() -> None:
    items = [
        user("stock price of ACME?"),
        {
            "type": "function_call",
            "call_id": "s",
            "name": "lookup_stock_price",
            "arguments": '{"ticker": "ACME"}',
        },
        {"type": "function_call_output", "call_id": "s", "output": "up 3 percent"},
    ]
    assert think(None, items, [STOCK]).text == "Here is the stock price: up 3 percent"


# --- comparisons need the earlier tool results in context ----------------------------------


def test_comparison_names_the_warmer_city_from_earlier_outputs() -> None:
    items = weather_turn("Weather in Austin?", "Austin", "c1")
    items += weather_turn("How about Seattle?", "Seattle", "c2")
    reply = think(None, [*items, user("Which city is warmer?")], [WEATHER])
    assert reply.text == "Austin is warmer (31°C) than Seattle (14°C)."
    reply = think(None, [*items, user("Which one is colder?")], [WEATHER])
    assert reply.text == "Seattle is colder (14°C) than Austin (31°C)."


def test_comparison_converts_fahrenheit() -> None:
    items = [user("q"), {"type": "function_call_output", "call_id": "x", "output": "Miami: 88F"}]
    items += [{"type": "function_call_output", "call_id": "y", "output": "Oslo: 20 C, windy"}]
    items += [assistant("ok"), user("Which is hotter?")]
    assert think(None, items, []).text == "Miami is warmer (88F) than Oslo (20C)."


def test_comparison_without_tool_outputs_names_no_city() -> None:
    items = [user("Weather in Austin?"), assistant("The weather in Austin is 31°C and sunny.")]
    items += [user("How about Seattle?"), assistant("The weather in Seattle is 14°C.")]
    text = think(None, [*items, user("Which city is warmer?")], [WEATHER]).text or ""
    assert "Austin" not in text and "Seattle" not in text
    assert "can't compare" in text


# --- facts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "ack"),
    [
        ("My name is Ada", "Got it: your name is Ada."),
        ("My favourite colour is teal.", "Got it: your favourite colour is teal."),
        ("Remember that the door code is 4711", "Got it: the door code is 4711."),
        ("My order id is A-1234", "Got it: your order id is A-1234."),
    ],
)
def test_fact_statements_are_acknowledged(statement: str, ack: str) -> None:
    assert think(None, [user(statement)], [WEATHER]).text == ack


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is my name?", "Your name is Ada."),
        ("What's my favorite color?", "Your favourite colour is teal."),
        ("what is the door code?", "The door code is 4711."),
        ("Do you remember my order id?", "Your order id is A-1234."),
    ],
)
def test_fact_questions_are_answered_verbatim(question: str, answer: str) -> None:
    items = [user("My name is Ada"), assistant("Got it"), user("My favourite colour is teal")]
    items += [user("Remember that the door code is 4711"), user("My order id is A-1234")]
    assert think(None, [*items, user(question)], [WEATHER]).text == answer


def test_the_most_recent_statement_wins() -> None:
    items = [user("My name is Ada"), user("My name is Grace"), user("What is my name?")]
    assert think(None, items, []).text == "Your name is Grace."


def test_unknown_fact_is_admitted() -> None:
    text = think(None, [user("What's my favourite colour?")], []).text
    assert text == "I don't know your favourite colour yet."


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant"])
def test_facts_are_found_inside_a_summary_message(role: str) -> None:
    summary = (
        "Summary of the conversation so far. User facts: name is Ada; favourite colour is teal."
    )
    item = assistant(summary) if role == "assistant" else {"role": role, "content": summary}
    items = [item, user("What is my name?")]
    assert think(None, items, []).text == "Your name is Ada."
    assert recall("favourite colour", [summary]) == "teal"


@pytest.mark.parametrize(
    "summary",
    [
        "User facts: name=Ada, favourite colour=teal",
        '{"name": "Ada", "favorite_color": "teal"}',
        "- name: Ada\n- favourite colour: teal",
        "The user's name is Ada and their favourite colour is teal.",
    ],
)
def test_summary_formats(summary: str) -> None:
    assert recall("name", [summary]) == "Ada"
    assert recall("favourite colour", [summary]) == "teal"
    assert recall("name", ["username is bob"]) is None


def test_facts_are_found_in_the_instructions() -> None:
    assert think("Known: the user's name is Ada.", [user("What is my name?")], []).text == (
        "Your name is Ada."
    )


def test_anything_else_is_noted() -> None:
    long = "x" * 200
    assert think(None, [user(long)], []).text == f"Noted: {'x' * 80}"
    assert think(None, "Tell me a joke", []).text == "Noted: Tell me a joke"


def test_estimate_tokens_is_about_a_quarter_of_the_chars_and_never_zero() -> None:
    assert estimate_tokens("") == 1
    assert estimate_tokens(None) == 1
    assert estimate_tokens("x" * 400) == 100
    assert estimate_tokens([{"role": "user", "content": "x" * 400}]) > 100


# --- the seed conversation through agents.Runner -------------------------------------------


async def _turn(agent: Agent[None], history: list[Any], text: str) -> tuple[list[Any], Any]:
    """One turn on a list input, no session: the caller owns the history."""
    config = RunConfig(tracing_disabled=True, model=OfflineModel())
    items: list[Any] = [*history, user(text)]
    result = await Runner.run(agent, items, run_config=config)
    return result.to_input_list(), result


def test_seed_conversation_with_the_runner() -> None:
    async def main() -> None:
        agent = build_agent()
        history, first = await _turn(agent, [], "What is the weather in Austin?")
        assert [i.type for i in first.new_items] == [
            "tool_call_item",
            "tool_call_output_item",
            "message_output_item",
        ]
        assert first.final_output == "The weather in Austin is 31°C and sunny."

        history, second = await _turn(agent, history, "How about Seattle?")
        calls = [i.raw_item for i in second.new_items if i.type == "tool_call_item"]
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [
            ("get_weather", {"city": "Seattle"})
        ]

        _, third = await _turn(agent, history, "Which city is warmer?")
        assert "Austin is warmer" in third.final_output

        # The same question without the earlier tool results in context: no answer.
        pruned = [
            i for i in history if i.get("type") not in {"function_call", "function_call_output"}
        ]
        _, blind = await _turn(agent, pruned, "Which city is warmer?")
        assert "Austin" not in blind.final_output and "Seattle" not in blind.final_output

    asyncio.run(main())
