"""The realistic model profile: answers of N tokens at a rate, a tool call first, jitter.

The offline model runs it in-process through the real SDK runner; the stub server's HTTP
side is tested in tests/service/test_stub_server.py.  Timing assertions are lower bounds
only (a token schedule cannot be beaten), never upper bounds on a shared machine.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner
from openai.types.responses import ResponseTextDeltaEvent

from shared.demo_agent import build_agent
from shared.models import chat_model, offline_profile
from shared.models.brain import Reply, ToolSpec, think
from shared.models.offline import OfflineModel
from shared.models.profile import ModelProfile, parse_rate, read_stamps, tokens
from shared.settings import Settings

WEATHER = ToolSpec("get_weather", "Weather for a city.", {"properties": {"city": {}}})


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def test_realistic_defaults_and_overrides() -> None:
    realistic = ModelProfile.build("realistic")
    assert realistic.answer_tokens == 300 and realistic.tokens_per_s == (60.0, 100.0)
    assert not realistic.tool_first and realistic.jitter_s > 0
    fast = ModelProfile.build("realistic", tokens_per_s="80", tool_first=True, answer_tokens=20)
    assert fast.tokens_per_s == (80.0, 80.0) and fast.tool_first and fast.answer_tokens == 20
    assert ModelProfile.build().instant and not realistic.instant


@pytest.mark.parametrize("bad", ["100-60", "-1", "fast"])
def test_bad_rates_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(bad)


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="realistic"):
        ModelProfile.build("slow")


def test_answer_is_padded_to_n_tokens_after_the_brains_own_words() -> None:
    profile = ModelProfile(answer_tokens=50)
    brain = think(None, [user("My name is Ada")])
    shaped = profile.shape(brain, [user("My name is Ada")], [])
    assert shaped.text is not None and shaped.text.startswith("Got it: your name is Ada. ")
    assert len(tokens(shaped.text)) == 50
    long = Reply(text=" ".join(["word"] * 80))
    assert profile.shape(long, [], []) == long  # never cut


def test_tool_first_calls_a_tool_then_answers_after_its_output() -> None:
    profile = ModelProfile(answer_tokens=30, tool_first=True)
    items = [user("Hello there, how are you?")]
    first = profile.shape(think(None, items, [WEATHER]), items, [WEATHER])
    assert first.text is None and [c.name for c in first.tool_calls] == ["get_weather"]
    call = {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c1", "output": "turnq: 20°C, clear"}
    after = [*items, call, output]
    second = profile.shape(think(None, after, [WEATHER]), after, [WEATHER])
    assert second.text is not None and len(tokens(second.text)) == 30
    # without tools there is nothing to call: the answer comes at once
    assert profile.shape(think(None, items), items, []).text is not None


def test_tool_first_keeps_the_brains_own_choice_of_call() -> None:
    profile = ModelProfile(tool_first=True)
    items = [user("What is the weather in Paris?")]
    shaped = profile.shape(think(None, items, [WEATHER]), items, [WEATHER])
    assert [c.arguments for c in shaped.tool_calls] == [{"city": "Paris"}]


def test_pace_draws_a_rate_in_the_range_and_jitters_the_first_byte() -> None:
    profile = ModelProfile(tokens_per_s=(60.0, 100.0), jitter_s=0.3)
    rng = random.Random(7)
    paces = [profile.pace(rng) for _ in range(200)]
    assert all(1 / 100 <= p.token_interval_s <= 1 / 60 for p in paces)
    assert all(0 <= p.first_byte_s <= 0.3 for p in paces)
    assert len({p.token_interval_s for p in paces}) > 100  # drawn, not fixed


def test_stamped_tokens_carry_their_send_time() -> None:
    profile = ModelProfile(answer_tokens=12, tokens_per_s=(200.0, 200.0), stamp=True)
    text = profile.shape(Reply(text="Hi."), [], []).text or ""
    frames = [(True, piece) for piece in tokens(text)] + [(False, text)]

    async def collect() -> list[str]:
        return [f async for f in profile.pace().stream(frames)]

    before = time.time()
    out = asyncio.run(collect())
    stamps = read_stamps("".join(out[:-1]))
    assert len(stamps) == 11 and stamps == sorted(stamps)
    assert before - 0.002 <= stamps[0] and stamps[-1] <= time.time() + 0.002
    assert read_stamps(out[-1]) == stamps  # the final text repeats the same stamps


async def _streamed(agent: Agent[Any], model: OfflineModel, text: str) -> tuple[Any, list[str]]:
    result = Runner.run_streamed(
        agent, [user(text)], run_config=RunConfig(model=model, tracing_disabled=True)
    )
    deltas = [
        e.data.delta
        async for e in result.stream_events()
        if e.type == "raw_response_event" and isinstance(e.data, ResponseTextDeltaEvent)
    ]
    return result, deltas


def test_offline_model_streams_n_tokens_at_the_rate() -> None:
    n, high = 40, 400.0
    model = OfflineModel(profile=ModelProfile(answer_tokens=n, tokens_per_s=(300.0, high)))
    started = time.perf_counter()
    result, deltas = asyncio.run(_streamed(Agent(name="plain"), model, "Tell me a story"))
    took = time.perf_counter() - started
    assert len(deltas) == n and "".join(deltas) == result.final_output
    assert took >= n / high


def test_offline_model_tool_first_through_the_runner() -> None:
    profile = ModelProfile(answer_tokens=25, tokens_per_s=(500.0, 500.0), tool_first=True)
    result, deltas = asyncio.run(_streamed(build_agent(), OfflineModel(profile=profile), "Hello"))
    kinds = [i.type for i in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    assert len(deltas) == 25 and "".join(deltas) == result.final_output
    assert result.context_wrapper.usage.requests == 2


def test_offline_model_plain_call_waits_for_the_whole_answer() -> None:
    model = OfflineModel(profile=ModelProfile(answer_tokens=20, tokens_per_s=(200.0, 200.0)))
    started = time.perf_counter()
    result = asyncio.run(Runner.run(Agent(name="plain"), "hi", run_config=RunConfig(model=model)))
    assert len(tokens(result.final_output)) == 20
    assert time.perf_counter() - started >= 20 / 200


def test_settings_choose_the_offline_profile() -> None:
    settings = Settings(
        model_provider="offline",
        model_profile="realistic",
        model_tokens_per_s="80",
        model_tool_first=True,
    )
    profile = offline_profile(settings)
    assert profile.answer_tokens == 300 and profile.tokens_per_s == (80.0, 80.0)
    assert profile.tool_first
    model = chat_model(settings)
    assert isinstance(model, OfflineModel) and model.profile == profile
    assert offline_profile(Settings(model_provider="offline")).instant
