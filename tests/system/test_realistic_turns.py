"""Turns at production shape through real workers: the stub's realistic profile over HTTP.

The stub (a real `turnq stub-llm` process) first calls a tool, then streams a long answer
at a rate; the worker runs the turn through the OpenAI client on both APIs, and a reader
follows it with ``AsyncClient.events`` as the gateway's SSE does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from producer import AsyncClient, Client
from shared.models.profile import tokens
from shared.status import TurnStatus
from tests.support.stub_llm import StubLLM, stub_llm_process

pytestmark = pytest.mark.system

ANSWER_TOKENS = 120


@pytest.fixture(scope="module")
def realistic_stub() -> Iterator[StubLLM]:
    options = ("--profile", "realistic", "--tool-first", "--jitter", "0")
    with stub_llm_process(*options, "--answer-tokens", str(ANSWER_TOKENS)) as stub:
        yield stub


def collect(
    turn_id: str, user: str, last_event_id: str = "0-0"
) -> list[tuple[str, dict[str, str]]]:
    async def run() -> list[tuple[str, dict[str, str]]]:
        async with AsyncClient.from_settings() as c:
            return [e async for e in c.events(turn_id, user, last_event_id)]

    return asyncio.run(run())


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_tool_first_turn_streams_the_answer_after_the_tool(
    client: Client, start_worker: Any, realistic_stub: StubLLM, uid: str, api: str
) -> None:
    realistic_stub.configure(tokens_per_s="400-600")
    start_worker(f"real-{api}", **realistic_stub.worker_env(api))
    user = f"u-{uid}"
    turn = client.enqueue(f"real-{api}-{uid}", user, "Good morning!")
    events = [e for _, e in collect(turn.id, user)]
    done = client.get_turn(turn.id)
    assert done.status is TurnStatus.SUCCEEDED and done.output
    kinds = [e["type"] for e in events]
    assert kinds[0] == "status" and events[-1] == {"type": "status", "status": "succeeded"}
    assert kinds.index("tool_call") < kinds.index("tool_output") < kinds.index("delta")
    assert events[kinds.index("tool_call")]["name"] == "get_weather"
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    assert text == done.output and len(tokens(text)) == ANSWER_TOKENS
    assert done.usage and done.usage["requests"] == 2  # the tool call, then the answer
