"""OfflineModel through the real Agents SDK runner: tools, streaming, usage, ids, memory."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agents import (
    Agent,
    ModelSettings,
    ModelTracing,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
)
from openai.types.responses import ResponseCompletedEvent, ResponseTextDeltaEvent

from shared.demo_agent import build_agent, get_weather
from shared.models import build_model_provider, chat_model
from shared.models.offline import OfflineModel, OfflineModelProvider
from shared.settings import Settings

SEED = ["What is the weather in Austin?", "How about Seattle?", "Which city is warmer?"]


def config(model: OfflineModel | None = None) -> RunConfig:
    return RunConfig(tracing_disabled=True, model=model or OfflineModel())


async def run_turn(
    agent: Agent[None], history: list[Any], text: str, stream: bool = False
) -> tuple[list[Any], Any, list[str]]:
    """One turn on a list input (no session); returns (new history, result, text deltas)."""
    items = [*history, {"role": "user", "content": text}]
    deltas: list[str] = []
    result: Any
    if stream:
        result = Runner.run_streamed(agent, items, run_config=config())
        async for event in result.stream_events():
            if event.type == "raw_response_event" and isinstance(
                event.data, ResponseTextDeltaEvent
            ):
                deltas.append(event.data.delta)
    else:
        result = await Runner.run(agent, items, run_config=config())
    return result.to_input_list(), result, deltas


async def conversation(texts: list[str], stream: bool = False) -> list[Any]:
    agent, history, results = build_agent(), list[Any](), []
    for text in texts:
        history, result, deltas = await run_turn(agent, history, text, stream)
        results.append((result, deltas))
    return results


def test_seed_conversation_calls_tools_and_compares() -> None:
    results = asyncio.run(conversation(SEED))
    outputs = [r.final_output for r, _ in results]
    assert outputs == [
        "The weather in Austin is 31°C and sunny.",
        "The weather in Seattle is 14°C and light rain.",
        "Austin is warmer (31°C) than Seattle (14°C).",
    ]
    second_calls = [i.raw_item for i in results[1][0].new_items if i.type == "tool_call_item"]
    assert [c.arguments for c in second_calls] == ['{"city": "Seattle"}']


def test_comparison_without_earlier_tool_results_does_not_name_a_city() -> None:
    async def main() -> str:
        agent, history = build_agent(), list[Any]()
        for text in SEED[:2]:
            history, _, _ = await run_turn(agent, history, text)
        kept = [
            i for i in history if i.get("type") not in {"function_call", "function_call_output"}
        ]
        _, result, _ = await run_turn(agent, kept, SEED[2])
        return str(result.final_output)

    answer = asyncio.run(main())
    assert "Austin" not in answer and "Seattle" not in answer


def test_streaming_yields_deltas_and_the_same_final_output() -> None:
    plain = asyncio.run(conversation(SEED))
    streamed = asyncio.run(conversation(SEED, stream=True))
    for (p, _), (s, deltas) in zip(plain, streamed, strict=True):
        assert s.final_output == p.final_output
        assert len(deltas) > 1
        assert "".join(deltas) == s.final_output


def test_stream_response_ends_with_response_completed() -> None:
    async def main() -> list[Any]:
        return [
            e
            async for e in OfflineModel().stream_response(
                None,
                "What is the weather in Paris?",
                ModelSettings(),
                [get_weather],
                None,
                [],
                ModelTracing.DISABLED,
                previous_response_id=None,
                conversation_id=None,
                prompt=None,
            )
        ]

    events = asyncio.run(main())
    assert isinstance(events[-1], ResponseCompletedEvent)
    assert events[-1].response.output[0].type == "function_call"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_usage_reports_one_request_per_model_call_with_tokens() -> None:
    for stream in (False, True):
        results = asyncio.run(conversation(SEED, stream=stream))
        for result, _ in results:
            for response in result.raw_responses:
                assert response.usage.requests == 1
                assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
                assert response.usage.total_tokens == (
                    response.usage.input_tokens + response.usage.output_tokens
                )
        first_usage = results[0][0].context_wrapper.usage
        assert first_usage.requests == 2  # tool call + answer
        assert len(first_usage.request_usage_entries) == 2


def test_prompt_tokens_grow_with_the_history() -> None:
    results = asyncio.run(conversation(SEED))
    sizes = [r.raw_responses[0].usage.input_tokens for r, _ in results]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_call_ids_are_unique_across_a_long_conversation() -> None:
    cities = ["Austin", "Seattle", "Paris", "London", "Tokyo"]
    texts = [f"What is the weather in {cities[i % 5]}?" for i in range(20)]
    results = asyncio.run(conversation(texts))
    final_history = results[-1][0].to_input_list()
    call_ids = [i["call_id"] for i in final_history if i.get("type") == "function_call"]
    outputs = [i["call_id"] for i in final_history if i.get("type") == "function_call_output"]
    assert len(call_ids) == 20 and len(set(call_ids)) == 20
    assert outputs == call_ids
    # Deterministic: the same conversation produces the same ids.
    again = asyncio.run(conversation(texts[:2]))
    first_two = [
        i["call_id"] for i in again[-1][0].to_input_list() if i.get("type") == "function_call"
    ]
    assert first_two == call_ids[:2]


def test_fact_recall_across_thirty_unrelated_turns() -> None:
    texts = ["My name is Ada"] + [f"Tell me something about topic {n}" for n in range(30)]
    results = asyncio.run(conversation([*texts, "What is my name?"]))
    assert results[0][0].final_output == "Got it: your name is Ada."
    assert results[-1][0].final_output == "Your name is Ada."


def test_fact_recall_from_a_summary_system_message() -> None:
    summary = {
        "role": "system",
        "content": "Conversation summary: the user introduced themselves. User facts: name is Ada.",
    }

    async def main() -> Any:
        _, result, _ = await run_turn(build_agent(), [summary], "What is my name?")
        return result.final_output

    assert asyncio.run(main()) == "Your name is Ada."


def test_latency_is_applied_per_call() -> None:
    async def main() -> float:
        start = time.perf_counter()
        await Runner.run(build_agent(), "hello", run_config=config(OfflineModel(latency_s=0.05)))
        return time.perf_counter() - start

    assert asyncio.run(main()) >= 0.05


def test_provider_serves_offline_models_for_any_name() -> None:
    model = OfflineModelProvider().get_model("gpt-4.1-mini")
    assert isinstance(model, OfflineModel)

    async def main() -> Any:
        run_config = RunConfig(tracing_disabled=True, model_provider=OfflineModelProvider())
        agent = build_agent().clone(model="gpt-4.1-mini")
        return await Runner.run(agent, "What is the weather in Tokyo?", run_config=run_config)

    assert asyncio.run(main()).final_output == "The weather in Tokyo is 24°C and humid."


def test_settings_pick_the_backend() -> None:
    offline = Settings(model_provider="offline")
    assert isinstance(chat_model(offline), OfflineModel)
    assert isinstance(build_model_provider(offline), OfflineModelProvider)

    remote = {"model_provider": "openai", "openai_base_url": "http://127.0.0.1:9/v1"}
    chat = chat_model(Settings(openai_api="chat", **remote))  # type: ignore[arg-type]
    assert isinstance(chat, OpenAIChatCompletionsModel)
    responses = chat_model(Settings(openai_api="responses", **remote))  # type: ignore[arg-type]
    assert isinstance(responses, OpenAIResponsesModel)
    provider = build_model_provider(Settings(openai_api="chat", **remote))  # type: ignore[arg-type]
    assert isinstance(provider.get_model(None), OpenAIChatCompletionsModel)
