"""Agents for tests, loaded by worker subprocesses through ``TURNQ_AGENT=tests.agents:NAME``.

``EchoModel`` answers ``echo: <last user message> [ctx=<items it saw>]`` after an
optional delay (fixed, or random in a range), so tests can see exactly what context a
turn ran with.  A message
containing ``FAIL-PERMANENT`` makes the model raise a non-retryable error.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from typing import Any

from agents import Agent, Model, ModelResponse, UserError
from agents.usage import Usage
from openai.types.responses import (
    Response,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from shared.models.offline import response_stream_events


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
