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
    assert kinds[0] == "status" and events[-1] == {
        "type": "status",
        "status": "succeeded",
        "agent": "Assistant",
    }
    assert kinds.index("tool_call") < kinds.index("tool_output") < kinds.index("delta")
    assert events[kinds.index("tool_call")]["name"] == "get_weather"
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    assert text == done.output and len(tokens(text)) == ANSWER_TOKENS
    assert done.usage and done.usage["requests"] == 2  # the tool call, then the answer


def test_deltas_are_coalesced_and_resume_from_any_event_is_exact(
    client: Client, start_worker: Any, realistic_stub: StubLLM, uid: str
) -> None:
    realistic_stub.configure(tokens_per_s="100")  # ~1.2 s of text: ~24 flush intervals
    start_worker("coalesce", **realistic_stub.worker_env("chat"))
    user = f"u-{uid}"
    turn = client.enqueue(f"coalesce-{uid}", user, "Good morning!")
    events = collect(turn.id, user)
    done = client.get_turn(turn.id)
    assert done.status is TurnStatus.SUCCEEDED
    deltas = [e for _, e in events if e["type"] == "delta"]
    assert "".join(d["text"] for d in deltas) == done.output
    assert len(deltas) <= ANSWER_TOKENS / 3  # 120 tokens, far fewer entries
    assert len(deltas) >= 2  # still streamed, not one block at the end
    for k in range(len(events) - 1):  # a reconnect after any event gets exactly the rest
        assert collect(turn.id, user, last_event_id=events[k][0]) == events[k + 1 :]


def test_stream_entries_per_turn_with_coalescing_off(
    client: Client, start_worker: Any, realistic_stub: StubLLM, uid: str
) -> None:
    """The control: TURNQ_STREAM_FLUSH_MS=0 sends one entry per token, as before."""
    realistic_stub.configure(tokens_per_s="1000")
    start_worker("uncoalesced", TURNQ_STREAM_FLUSH_MS="0", **realistic_stub.worker_env("chat"))
    user = f"u-{uid}"
    turn = client.enqueue(f"nocoalesce-{uid}", user, "Good morning!")
    deltas = [e for _, e in collect(turn.id, user) if e["type"] == "delta"]
    assert len(deltas) == ANSWER_TOKENS


def follow_and_cancel(turn_id: str, user: str, mode: str) -> list[dict[str, str]]:
    """Read the turn's events; after the third text delta, cancel it; read to the end."""

    async def run() -> list[dict[str, str]]:
        async with AsyncClient.from_settings() as c:
            seen: list[dict[str, str]] = []
            async for _, event in c.events(turn_id, user):
                seen.append(event)
                if sum(e["type"] == "delta" for e in seen) == 3:
                    await c.cancel(turn_id, user, mode=mode)
            return seen

    return asyncio.run(run())


@pytest.mark.parametrize("mode", ["interrupt", "rollback"])
def test_cancel_mid_stream_keeps_every_character_sent_in_order(
    client: Client, start_worker: Any, realistic_stub: StubLLM, uid: str, mode: str
) -> None:
    realistic_stub.configure(tokens_per_s="40")  # 3 s of text: time to cancel in the middle
    start_worker(f"cancel-{mode}", TURNQ_STREAM_FLUSH_MS="200", **realistic_stub.worker_env("chat"))
    user = f"u-{uid}"
    whole = client.enqueue(f"whole-{mode}-{uid}", user, "Good morning!")
    full = client.wait(whole.id, timeout=60).output or ""
    turn = client.enqueue(f"cancel-{mode}-{uid}", user, "Good morning!")
    events = follow_and_cancel(turn.id, user, mode)
    assert client.get_turn(turn.id).status is TurnStatus.CANCELLED
    assert events[-1] == {"type": "status", "status": "cancelled", "agent": "Assistant"}
    assert all(e["type"] != "status" for e in events[1:-1])  # nothing after the end
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    if mode == "interrupt":  # the model call finishes: the whole answer, then cancelled
        assert text == full
    else:  # stopped at once: what was streamed is exactly the start of the answer
        assert text and full.startswith(text) and len(text) < len(full)
