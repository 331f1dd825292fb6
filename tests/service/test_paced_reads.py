"""A streamed model response read at most every pace (shared/models/pacing.py, decision 0015).

The stub streams an answer over real HTTP, a token every 5 ms; the OpenAI client reads it
through ``paced_transport`` with a 30 ms pace.  The turn must stream exactly the text and
end with exactly the output of an unpaced read, in several tokens per socket read.
"""

# ruff: noqa: ASYNC109 - httpcore's network interface takes timeouts as arguments
from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore2
import httpx2
import pytest
from agents import Model, OpenAIChatCompletionsModel, OpenAIResponsesModel, RunConfig, Runner
from openai import DefaultAsyncHttpxClient

from shared.demo_agent import build_agent
from shared.models.pacing import PacedBackend, paced_transport
from shared.models.parsing import FastParseOpenAI
from shared.models.stub_server import StubConfig, StubServer

pytestmark = pytest.mark.timeout(60)

TOKENS = 40


class _Counted(httpcore2.AsyncNetworkStream):
    def __init__(self, inner: httpcore2.AsyncNetworkStream, reads: list[int]) -> None:
        self.inner, self.reads = inner, reads

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = await self.inner.read(max_bytes, timeout)
        self.reads.append(len(data))
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self.inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Counting(httpcore2.AsyncNetworkBackend):
    """The socket reads, below the pacing."""

    def __init__(self, inner: httpcore2.AsyncNetworkBackend) -> None:
        self.inner = inner
        self.reads: list[int] = []

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:  # fmt: skip
        stream = await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Counted(stream, self.reads)


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    with StubServer(StubConfig(answer_tokens=TOKENS, tokens_per_s="200")) as server:
        yield server


def _turn(stub: StubServer, api: str, pace_s: float) -> tuple[str, str, int]:
    transport = paced_transport(httpx2.Limits(), pace_s or 1e-9)
    paced = transport._pool._network_backend
    assert isinstance(paced, PacedBackend)
    counting = paced.inner = _Counting(paced.inner)
    client = FastParseOpenAI(
        base_url=stub.base_url, api_key="test", max_retries=0,
        http_client=DefaultAsyncHttpxClient(transport=transport),
    )  # fmt: skip
    model: Model = (
        OpenAIChatCompletionsModel(model="turnq-stub", openai_client=client)
        if api == "chat"
        else OpenAIResponsesModel(model="turnq-stub", openai_client=client)
    )

    async def run() -> tuple[str, str]:
        try:
            config = RunConfig(tracing_disabled=True, model=model)
            result: Any = Runner.run_streamed(build_agent(), "Hi there", run_config=config)
            text = ""
            async for event in result.stream_events():
                data = getattr(event, "data", None)
                if getattr(data, "type", "") == "response.output_text.delta":
                    text += data.delta
            return text, str(result.final_output)
        finally:
            await client.close()

    text, output = asyncio.run(run())
    return text, output, len(counting.reads)


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_paced_read_streams_the_same_text_in_fewer_reads(stub: StubServer, api: str) -> None:
    text, output, paced_reads = _turn(stub, api, pace_s=0.030)
    plain_text, plain_output, plain_reads = _turn(stub, api, pace_s=0)
    assert text == plain_text and output == plain_output
    assert len(text.split()) >= TOKENS // 2
    assert paced_reads <= TOKENS / 3, (paced_reads, plain_reads)  # ~6 tokens in 30 ms
