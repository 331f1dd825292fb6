"""The stub LLM over real HTTP on loopback, driven by the real OpenAI client and SDK models.

No Redis or Postgres needed: the "service" here is the stub itself, served by uvicorn on a
free port in a background thread (and once as ``python -m`` in a subprocess).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from agents import Agent, ModelSettings, RunConfig, Runner
from openai import AsyncOpenAI
from openai.types.responses import ResponseTextDeltaEvent

from shared.demo_agent import build_agent
from shared.models import build_model_provider, chat_model
from shared.models.profile import read_stamps, tokens
from shared.models.stub_server import StubConfig, StubServer
from shared.settings import Settings
from tests.support.servers import wait_until
from tests.support.stub_llm import stub_llm_process

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
SEED = ["What is the weather in Austin?", "How about Seattle?", "Which city is warmer?"]
ANSWERS = [
    "The weather in Austin is 31°C and sunny.",
    "The weather in Seattle is 14°C and light rain.",
    "Austin is warmer (31°C) than Seattle (14°C).",
]


@pytest.fixture(scope="module")
def server() -> Iterator[StubServer]:
    with StubServer(StubConfig()) as stub:
        yield stub


@pytest.fixture
def stub(server: StubServer) -> StubServer:
    """The shared server with default behaviour and zeroed stats for each test."""
    configure(server, **{k: v for k, v in vars(StubConfig()).items() if k != "model"})
    httpx.post(f"{server.url}/_stub/reset").raise_for_status()
    return server


def configure(stub: StubServer, **changes: Any) -> dict[str, Any]:
    response = httpx.post(f"{stub.url}/_stub/config", json=changes)
    response.raise_for_status()
    config: dict[str, Any] = response.json()
    return config


def stats(stub: StubServer) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{stub.url}/_stub/stats").json()
    return data


async def until_in_flight(stub: StubServer, count: int) -> None:
    """Wait, off the event loop, until the stub reports ``count`` calls in flight."""

    def check() -> bool:
        return bool(stats(stub)["in_flight"] == count)

    await asyncio.to_thread(wait_until, check, 10.0, 0.01, f"{count} calls in flight")


def client(stub: StubServer, **kwargs: Any) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=stub.base_url, api_key="test", **kwargs)


# --- the seed conversation through the SDK's HTTP models ------------------------------------


def http_settings(stub: StubServer, api: str) -> Settings:
    return Settings(
        model_provider="openai",
        openai_base_url=stub.base_url,
        openai_api_key="test",
        openai_api=api,  # type: ignore[arg-type]
        model_retries=0,
        model_timeout_s=10,
    )


async def seed_conversation(settings: Settings, stream: bool) -> list[tuple[Any, int]]:
    provider = build_model_provider(settings)
    run_config = RunConfig(
        tracing_disabled=True, model=settings.chat_model, model_provider=provider
    )
    agent = build_agent().clone(model_settings=ModelSettings(include_usage=True))
    history: list[Any] = []
    results = []
    try:
        for text in SEED:
            items = [*history, {"role": "user", "content": text}]
            deltas = 0
            if stream:
                result: Any = Runner.run_streamed(agent, items, run_config=run_config)
                async for event in result.stream_events():
                    if event.type == "raw_response_event" and isinstance(
                        event.data, ResponseTextDeltaEvent
                    ):
                        deltas += 1
            else:
                result = await Runner.run(agent, items, run_config=run_config)
            history = result.to_input_list()
            results.append((result, deltas))
    finally:
        await provider.aclose()
    return results


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_seed_conversation_over_http(stub: StubServer, api: str, stream: bool) -> None:
    settings = http_settings(stub, api)
    results = asyncio.run(seed_conversation(settings, stream))
    assert [r.final_output for r, _ in results] == ANSWERS
    for result, deltas in results:
        usage = result.context_wrapper.usage
        assert usage.input_tokens > 0 and usage.output_tokens > 0
        if stream:
            assert deltas > 1
    calls = [i.raw_item for i in results[1][0].new_items if i.type == "tool_call_item"]
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Seattle"}]
    seen = stats(stub)
    assert seen["total_calls"] == 5  # two per tool turn, one for the comparison
    assert seen["conversations"] == 1 and seen["overlapping_conversations"] == 0
    assert seen["outcomes"] == {"ok": 5} and seen["in_flight"] == 0


def test_chat_model_helper_talks_to_the_stub(stub: StubServer) -> None:
    settings = Settings(model_provider="openai", openai_base_url=stub.base_url, openai_api="chat")

    async def main() -> Any:
        model = chat_model(settings)
        return await Runner.run(
            build_agent(), "What is the weather in Paris?", run_config=RunConfig(model=model)
        )

    assert asyncio.run(main()).final_output == "The weather in Paris is 21°C and sunny."


def test_models_endpoint(stub: StubServer) -> None:
    async def main() -> list[str]:
        async with client(stub) as c:
            return [m.id async for m in c.models.list()]

    assert asyncio.run(main()) == ["turnq-stub"]


def test_chat_stream_reports_usage_in_the_last_chunk(stub: StubServer) -> None:
    body = {
        "model": "x",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hello there"}],
    }
    with httpx.stream("POST", f"{stub.base_url}/chat/completions", json=body) as response:
        frames = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert text == "Noted: hello there"


# --- fault injection --------------------------------------------------------------------------


def test_429_carries_retry_after(stub: StubServer) -> None:
    configure(stub, script=["429"], retry_after_s=2)
    response = httpx.post(f"{stub.base_url}/chat/completions", json={"messages": []})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"


def test_429_then_ok_succeeds_through_turnqs_one_retry_layer(stub: StubServer) -> None:
    """The OpenAI client does not retry (no nested layers); turnq's model wrapper does,
    honouring Retry-After."""
    from workers.models import TurnqModel, TurnScope, turn_scope
    from workers.retry import ModelCallFailed, RetryPolicy

    settings = Settings(
        model_provider="openai", openai_base_url=stub.base_url, openai_api="chat", model_retries=2
    )

    async def run(model: Any) -> Any:
        with turn_scope(TurnScope(RetryPolicy.from_settings(settings))):
            return await Runner.run(build_agent(), "hello", run_config=RunConfig(model=model))

    configure(stub, script=["429", "ok"], retry_after_s=0.01)
    with pytest.raises(openai.RateLimitError):
        asyncio.run(run(chat_model(settings)))  # the bare client gives up at once
    assert stats(stub)["outcomes"] == {"429": 1}

    configure(stub, script=["429", "ok"], retry_after_s=0.01)
    assert asyncio.run(run(TurnqModel(chat_model(settings)))).final_output == "Noted: hello"
    assert stats(stub)["outcomes"] == {"429": 2, "ok": 1}

    configure(stub, script=["429", "429", "429", "ok"], retry_after_s=0.01)
    with pytest.raises(ModelCallFailed, match="after 3 attempts"):  # 1 + model_retries
        asyncio.run(run(TurnqModel(chat_model(settings))))


def test_persistent_500_raises(stub: StubServer) -> None:
    configure(stub, fail_rate=1.0)

    async def main() -> None:
        async with client(stub, max_retries=1) as c:
            await c.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])

    with pytest.raises(openai.InternalServerError):
        asyncio.run(main())
    assert stats(stub)["outcomes"] == {"500": 2}  # the first try and one retry


def test_timeout_raises_and_frees_the_slot(stub: StubServer) -> None:
    configure(stub, script=["timeout"], timeout_s=30)

    async def main() -> None:
        async with client(stub, max_retries=0, timeout=0.3) as c:
            with pytest.raises(openai.APITimeoutError):
                await c.responses.create(model="x", input="hi")
        # The stub notices the hang-up instead of sleeping its 30 s out.
        await until_in_flight(stub, 0)

    asyncio.run(main())


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_malformed_json_raises(stub: StubServer, stream: bool) -> None:
    configure(stub, script=["malformed"])

    async def main() -> None:
        async with client(stub, max_retries=0) as c:
            messages: Any = [{"role": "user", "content": "hi"}]
            if stream:
                async for _ in await c.chat.completions.create(
                    model="x", messages=messages, stream=True
                ):
                    pass
            else:
                await c.chat.completions.create(model="x", messages=messages)

    with pytest.raises(json.JSONDecodeError):
        asyncio.run(main())


def test_runtime_config_rejects_unknown_fields(stub: StubServer) -> None:
    assert configure(stub, latency_s="0.25")["latency_s"] == 0.25
    response = httpx.post(f"{stub.url}/_stub/config", json={"latency": 1})
    assert response.status_code == 400


# --- the realistic profile over HTTP -----------------------------------------------------------


async def streamed_turn(settings: Settings, agent: Any, text: str) -> tuple[Any, list[str]]:
    provider = build_model_provider(settings)
    run_config = RunConfig(
        tracing_disabled=True, model=settings.chat_model, model_provider=provider
    )
    try:
        result: Any = Runner.run_streamed(agent, text, run_config=run_config)
        deltas = [
            e.data.delta
            async for e in result.stream_events()
            if e.type == "raw_response_event" and isinstance(e.data, ResponseTextDeltaEvent)
        ]
    finally:
        await provider.aclose()  # type: ignore[attr-defined]
    return result, deltas


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_realistic_profile_streams_n_tokens_at_the_rate(stub: StubServer, api: str) -> None:
    n, high = 60, 300.0
    configure(stub, profile="realistic", answer_tokens=n, tokens_per_s=f"200-{high:g}")
    started = time.perf_counter()
    result, deltas = asyncio.run(
        streamed_turn(http_settings(stub, api), build_agent(), "Tell me a story")
    )
    took = time.perf_counter() - started
    assert len(deltas) == n and "".join(deltas) == result.final_output
    assert took >= n / high


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_tool_first_then_the_answer_streams_after_the_tool_output(
    stub: StubServer, api: str
) -> None:
    configure(stub, answer_tokens=30, tokens_per_s="1000", tool_first=True)
    result, deltas = asyncio.run(streamed_turn(http_settings(stub, api), build_agent(), "Hi there"))
    kinds = [i.type for i in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    assert len(deltas) == 30 and "".join(deltas) == result.final_output
    assert stats(stub)["total_calls"] == 2


def test_plain_call_waits_for_the_whole_answer(stub: StubServer) -> None:
    configure(stub, answer_tokens=40, tokens_per_s="200")

    async def call() -> str:
        async with client(stub, max_retries=0) as c:
            done = await c.chat.completions.create(
                model="x", messages=[{"role": "user", "content": "hello"}]
            )
            return done.choices[0].message.content or ""

    started = time.perf_counter()
    text = asyncio.run(call())
    assert len(tokens(text)) == 40 and time.perf_counter() - started >= 40 / 200


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_stamped_tokens_match_the_final_text(stub: StubServer, api: str) -> None:
    configure(stub, answer_tokens=20, tokens_per_s="500", stamp=True)
    before = time.time()
    result, deltas = asyncio.run(streamed_turn(http_settings(stub, api), Agent(name="a"), "hi"))
    stamps = read_stamps("".join(deltas))
    assert len(stamps) >= 15 and stamps == sorted(stamps) and stamps[0] >= before - 0.002
    assert read_stamps(result.final_output) == stamps


def test_profile_config_is_checked(stub: StubServer) -> None:
    config = configure(stub, profile="realistic")
    assert config["answer_tokens"] == 300 and config["tokens_per_s"] == "60-100"
    for bad in ({"tokens_per_s": "9-3"}, {"profile": "warp"}):
        assert httpx.post(f"{stub.url}/_stub/config", json=bad).status_code == 400


def test_cli_takes_the_profile_options() -> None:
    options = ("--profile", "realistic", "--tokens-per-s", "80", "--tool-first", "--jitter", "0")
    with stub_llm_process(*options) as proc:
        config = httpx.get(f"{proc.url}/_stub/config", timeout=5).json()
    assert config["answer_tokens"] == 300 and config["tokens_per_s"] == "80-80"
    assert config["tool_first"] is True and config["jitter_s"] == 0


# --- per-conversation concurrency ---------------------------------------------------------------


async def hold_concurrently(stub: StubServer, conversations: list[list[dict[str, Any]]]) -> None:
    """Keep one slow call per message list in flight together, then hang up on all of them."""
    async with client(stub, max_retries=0) as c:
        tasks = [
            asyncio.create_task(c.chat.completions.create(model="x", messages=messages))  # type: ignore[arg-type]
            for messages in conversations
        ]
        await until_in_flight(stub, len(conversations))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await until_in_flight(stub, 0)


def test_two_calls_of_one_conversation_at_once_are_an_overlap(stub: StubServer) -> None:
    configure(stub, latency_s=30)
    first = {"role": "user", "content": "Hi, I am session one"}
    later_turn = [
        first,
        {"role": "assistant", "content": "Noted"},
        {"role": "user", "content": "more"},
    ]
    asyncio.run(hold_concurrently(stub, [[first], later_turn]))
    seen = stats(stub)
    assert seen["conversations"] == 1
    assert seen["overlapping_conversations"] == 1
    assert seen["max_conversation_concurrency"] == 2


def test_two_conversations_at_once_are_not_an_overlap(stub: StubServer) -> None:
    configure(stub, latency_s=30)
    one = [{"role": "user", "content": "Hi, I am session one"}]
    two = [{"role": "user", "content": "Hi, I am session two"}]
    asyncio.run(hold_concurrently(stub, [one, two]))
    seen = stats(stub)
    assert seen["conversations"] == 2 and seen["max_in_flight"] == 2
    assert seen["overlapping_conversations"] == 0


def test_many_calls_in_flight_at_once(stub: StubServer) -> None:
    configure(stub, latency_s=30)
    conversations = [[{"role": "user", "content": f"session {n}"}] for n in range(200)]
    asyncio.run(hold_concurrently(stub, conversations))
    seen = stats(stub)
    assert seen["max_in_flight"] == 200 and seen["overlapping_conversations"] == 0


# --- the command line ---------------------------------------------------------------------------


def test_module_entry_point_prints_its_url_and_serves() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.models.stub_server", "--port", "0", "--latency", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server printed (and flushed) its URL
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert httpx.get(f"{url}/models", timeout=10).json()["data"][0]["id"] == "turnq-stub"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
