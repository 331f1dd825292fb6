"""Double texting through the HTTP API: every multitask_strategy against a slow agent.

The contract (shared/multitask.py): enqueue runs both in order; reject is a 409 naming
the busy turn; interrupt and rollback end the running turn ``cancelled`` (never
half-written) and run the new one; rollback leaves nothing of the cancelled turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.system.test_gateway_support import Api, GatewayProcess, new_key, text_of

pytestmark = pytest.mark.system

SLOW = {"TURNQ_AGENT": "tests.agents:slow_echo", "TEST_MODEL_LATENCY_S": "2.0"}


@pytest.fixture(scope="module")
def gateway(stack_env: dict[str, str]) -> Iterator[GatewayProcess]:
    g = GatewayProcess({**stack_env, "TURNQ_GATEWAY_RATE_PER_S": "1000"}, "gateway-mt")
    g.start()
    yield g
    g.stop()


@pytest.fixture
def api(gateway: GatewayProcess, database_url: str, uid: str, start_worker: Any) -> Iterator[Api]:
    start_worker("gw-mt", **SLOW)
    client = Api(gateway.url, new_key(database_url, f"mt-{uid}"))
    yield client
    client.close()


def _users(api: Api, session: str) -> list[str]:
    return [text_of(i) for i in api.items(session) if i.get("role") == "user"]


def _answers(api: Api, session: str) -> list[str]:
    return [text_of(i) for i in api.items(session) if i.get("role") == "assistant"]


def test_enqueue_runs_both_in_order(api: Api, uid: str) -> None:
    session = f"enq-{uid}"
    first = api.send(session, "one")
    second = api.send(session, "two", multitask_strategy="enqueue")
    a, b = api.wait(first["turn_id"]), api.wait(second["turn_id"])
    assert (a["status"], b["status"]) == ("succeeded", "succeeded")
    assert (a["seq"], b["seq"]) == (1, 2)
    assert b["started_at"] >= a["finished_at"]
    assert b["output"] == "echo: two [ctx=3]"  # it saw the first turn
    assert _users(api, session) == ["one", "two"]


def test_reject_is_409_naming_the_busy_turn(api: Api, uid: str) -> None:
    session = f"rej-{uid}"
    first = api.send(session, "one")
    api.wait_status(first["turn_id"], "running")
    problem = api.expect(
        409,
        "POST",
        f"/v1/sessions/{session}/turns",
        json={"content": "two", "multitask_strategy": "reject"},
    )
    assert problem["code"] == "session_busy"
    assert problem["turn_id"] == first["turn_id"] and problem["turn_status"] == "running"
    assert first["turn_id"] in problem["detail"]
    assert api.wait(first["turn_id"])["status"] == "succeeded"
    assert _users(api, session) == ["one"]
    # Not busy any more: reject accepts.
    third = api.send(session, "three", multitask_strategy="reject")
    assert api.wait(third["turn_id"])["status"] == "succeeded"


@pytest.mark.parametrize("strategy", ["interrupt", "rollback"])
def test_interrupt_and_rollback_cancel_the_running_turn(api: Api, uid: str, strategy: str) -> None:
    session = f"{strategy}-{uid}"
    first = api.send(session, "one")
    api.wait_status(first["turn_id"], "running")
    second = api.send(session, "two", multitask_strategy=strategy)
    a, b = api.wait(first["turn_id"]), api.wait(second["turn_id"])
    assert a["status"] == "cancelled", a
    assert b["status"] == "succeeded", b
    assert b["started_at"] >= a["finished_at"], "the new turn overlapped the cancelled one"
    users, answers = _users(api, session), _answers(api, session)
    assert users[-1] == "two" and answers[-1] == b["output"]
    if strategy == "rollback":
        assert users == ["two"], "rollback must leave nothing of the cancelled turn"
        assert answers == [b["output"]] and b["output"] == "echo: two [ctx=1]"
    else:
        # interrupt keeps what the cancelled turn finished (here, possibly its answer).
        assert users in (["one", "two"], ["two"])
        assert len(answers) <= len(users)
    # The new turn saw exactly what the transcript holds before it.
    assert b["output"] == f"echo: two [ctx={len(api.items(session)) - 1}]"
    # Never half-written: every call has its output, every item belongs to a finished turn.
    items = api.items(session)
    calls = {i.get("call_id") for i in items if i.get("type") == "function_call"}
    outputs = {i.get("call_id") for i in items if i.get("type") == "function_call_output"}
    assert calls == outputs


def test_interrupt_cancels_queued_turns_too(api: Api, uid: str) -> None:
    session = f"intq-{uid}"
    first = api.send(session, "one")
    queued = api.send(session, "queued")
    api.wait_status(first["turn_id"], "running")
    last = api.send(session, "last", multitask_strategy="interrupt")
    assert api.wait(queued["turn_id"])["status"] == "cancelled"
    assert api.wait(first["turn_id"])["status"] == "cancelled"
    assert api.wait(last["turn_id"])["status"] == "succeeded"
    assert "queued" not in _users(api, session)
    session_view = api.expect(200, "GET", f"/v1/sessions/{session}")
    assert session_view["turn_count"] == 3
