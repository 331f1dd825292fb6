"""Turn events as they happen (resumable), double texting and cancellation, with real workers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from producer import AsyncClient, Client
from shared.errors import SessionBusy, TurnNotCancellable
from shared.status import TurnStatus
from tests.system.test_pipeline import wait_for

pytestmark = pytest.mark.system

SLOW = {"TURNQ_AGENT": "tests.agents:slow_echo", "TEST_MODEL_LATENCY_S": "3"}


def collect(
    turn_id: str, user: str, last_event_id: str = "0-0", stop_after: int | None = None
) -> list[tuple[str, dict[str, str]]]:
    async def run() -> list[tuple[str, dict[str, str]]]:
        async with AsyncClient.from_settings() as c:
            out = []
            async for event in c.events(turn_id, user, last_event_id):
                out.append(event)
                if stop_after is not None and len(out) >= stop_after:
                    break
            return out

    return asyncio.run(run())


def test_events_stream_tool_calls_and_deltas_and_resume(
    client: Client, start_worker: Any, uid: str
) -> None:
    start_worker("events", TURNQ_AGENT="shared.demo_agent:build_agent")
    user = f"u-{uid}"
    turn = client.enqueue(f"ev-{uid}", user, "What is the weather in Austin?")
    events = collect(turn.id, user)
    kinds = [e["type"] for _, e in events]
    assert kinds[0] == "status" and events[0][1]["status"] == "running"
    assert events[-1][1] == {"type": "status", "status": "succeeded", "agent": "Assistant"}
    call = next(e for _, e in events if e["type"] == "tool_call")
    assert call["name"] == "get_weather" and "Austin" in call["arguments"]
    output = next(e for _, e in events if e["type"] == "tool_output")
    assert output["call_id"] == call["call_id"] and "31" in output["output"]
    text = "".join(e["text"] for _, e in events if e["type"] == "delta")
    assert text == client.get_turn(turn.id).output
    assert kinds.index("tool_call") < kinds.index("tool_output") < kinds.index("delta")
    # Resume after the third event: exactly the rest, in order.
    first = collect(turn.id, user, stop_after=3)
    rest = collect(turn.id, user, last_event_id=first[-1][0])
    assert [*first, *rest] == events


def test_reject_names_the_running_turn(client: Client, start_worker: Any, uid: str) -> None:
    start_worker("reject", **SLOW)
    session, user = f"rej-{uid}", f"u-{uid}"
    running = client.enqueue(session, user, "long answer please")
    wait_for(lambda: client.get_turn(running.id).status is TurnStatus.RUNNING, 30, "not started")
    with pytest.raises(SessionBusy) as info:
        client.enqueue(session, user, "are you there?", multitask_strategy="reject")
    assert info.value.turn_id == running.id
    assert client.wait(running.id, 30).status is TurnStatus.SUCCEEDED
    assert [t.seq for t in client.turns(session, user)] == [1]  # nothing was written


@pytest.mark.parametrize("strategy", ["interrupt", "rollback"])
def test_interrupt_and_rollback_cancel_the_running_turn(
    client: Client, start_worker: Any, uid: str, strategy: str
) -> None:
    start_worker("double", **SLOW)
    session, user = f"{strategy}-{uid}", f"u-{uid}"
    first = client.enqueue(session, user, "first, slow")
    queued = client.enqueue(session, user, "second, still queued")
    wait_for(lambda: client.get_turn(first.id).status is TurnStatus.RUNNING, 30, "not started")
    newest = client.enqueue(session, user, "never mind, do this", multitask_strategy=strategy)
    assert client.get_turn(queued.id).status is TurnStatus.CANCELLED  # at once: never ran
    done_first = client.wait(first.id, 30)
    assert done_first.status is TurnStatus.CANCELLED
    done_new = client.wait(newest.id, 30)
    assert done_new.status is TurnStatus.SUCCEEDED
    users = [i["content"] for i in client.history(session, user) if i.get("role") == "user"]
    if strategy == "rollback":
        assert users == ["never mind, do this"]  # the cancelled turn left nothing behind
        assert done_new.output == "echo: never mind, do this [ctx=1]"
        assert done_first.output is None
    else:
        assert users == ["first, slow", "never mind, do this"]  # finished items kept
        assert done_new.output == "echo: never mind, do this [ctx=3]"
    assert client.get_turn(queued.id).attempts == 0


def test_cancel_queued_running_and_finished(client: Client, start_worker: Any, uid: str) -> None:
    start_worker("cancel", **SLOW)
    session, user = f"cancel-{uid}", f"u-{uid}"
    running = client.enqueue(session, user, "slow one")
    queued = client.enqueue(session, user, "waiting one")
    wait_for(lambda: client.get_turn(running.id).status is TurnStatus.RUNNING, 30, "not started")
    assert client.cancel(queued.id, user).status is TurnStatus.CANCELLED
    requested = client.cancel(running.id, user, mode="rollback")
    assert requested.status is TurnStatus.RUNNING  # stops at its next safe point
    assert client.wait(running.id, 30).status is TurnStatus.CANCELLED
    assert client.history(session, user) == []
    assert client.cancel(running.id, user).status is TurnStatus.CANCELLED  # idempotent
    done = client.enqueue(session, user, "quick")
    assert client.wait(done.id, 30).status is TurnStatus.SUCCEEDED
    with pytest.raises(TurnNotCancellable):
        client.cancel(done.id, user)
