"""The OpenAI client's fast parse path builds exactly what the client's own did.

Every response and streamed chunk the stub sends over real HTTP, through the Agents SDK's
Chat Completions and Responses models (streamed and not, a tool call first), is built both
ways: by validation (``shared/models/parsing.py``) and by the client's ``construct_type``.
They must be equal, of one type, with the same fields set.  What does not validate falls
back to the client's way (decision 0013).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from agents import Model, OpenAIChatCompletionsModel, OpenAIResponsesModel, RunConfig, Runner
from openai._models import construct_type
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent

from shared.demo_agent import build_agent
from shared.models.parsing import FastParseOpenAI, builder
from shared.models.stub_server import StubConfig, StubServer

pytestmark = pytest.mark.timeout(60)


class Compared(FastParseOpenAI):
    """Builds every response both ways and checks they agree; counts what it built."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.built: Counter[str] = Counter()

    def _process_response_data(self, *, data: object, cast_to: Any, response: Any) -> Any:
        build = builder(cast_to)
        assert build is not None and isinstance(data, dict), cast_to
        fast = build(data)  # raises if the fast path would have fallen back
        slow = construct_type(type_=cast_to, value=data)
        assert type(fast) is type(slow)
        assert fast == slow and fast.model_dump() == slow.model_dump()
        assert fast.model_fields_set == slow.model_fields_set
        self.built[type(fast).__name__] += 1
        return fast


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    config = StubConfig(answer_tokens=12, tokens_per_s="0", tool_first=True)
    with StubServer(config) as server:
        yield server


def _model(api: str, client: Compared) -> Model:
    if api == "chat":
        return OpenAIChatCompletionsModel(model="turnq-stub", openai_client=client)
    return OpenAIResponsesModel(model="turnq-stub", openai_client=client)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("api", ["chat", "responses"])
def test_every_response_the_model_sends_is_built_the_same_both_ways(
    stub: StubServer, api: str, stream: bool
) -> None:
    client = Compared(base_url=stub.base_url, api_key="test", max_retries=0)

    async def turn() -> Any:
        run_config = RunConfig(tracing_disabled=True, model=_model(api, client))
        try:
            if not stream:
                return await Runner.run(build_agent(), "Hi there", run_config=run_config)
            result: Any = Runner.run_streamed(build_agent(), "Hi there", run_config=run_config)
            async for _ in result.stream_events():
                pass
            return result
        finally:
            await client.close()

    result = asyncio.run(turn())
    kinds = [i.type for i in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    assert result.final_output
    built = sum(client.built.values())
    assert built > (12 if stream else 1), client.built  # every chunk of both calls went through it


def _client() -> FastParseOpenAI:
    return FastParseOpenAI(base_url="http://127.0.0.1:9", api_key="test")


@pytest.mark.parametrize(
    ("cast_to", "data"),
    [
        # a server's looser chunk: a finish reason this client does not know
        (ChatCompletionChunk, {
            "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "paused"}],
        }),
        # a stream event type newer than this client
        (ResponseStreamEvent, {"type": "response.future_thing", "sequence_number": 3}),
        # an event whose fields do not fit its type
        (ResponseStreamEvent, {"type": "response.output_text.delta", "delta": 7}),
    ],
)  # fmt: skip
def test_what_does_not_validate_is_built_the_clients_lenient_way(cast_to: Any, data: Any) -> None:
    built = _client()._process_response_data(
        data=data, cast_to=cast_to, response=httpx.Response(200)
    )
    assert built == construct_type(type_=cast_to, value=data)
