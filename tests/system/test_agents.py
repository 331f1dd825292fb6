"""Agents as written (I11) through real workers, the Python client and `turnq gateway`.

* ``tests.agents:support``: Triage hands billing questions to Billing.  The next turn of
  the session starts at Billing (no second handoff); Billing's ``whoami`` tool reports
  the run context: the user, the session, the turn and the caller's metadata.
* ``tests.agents:DESKS``: a mapping of two entry agents.  ``agent=`` binds a new session;
  another agent later is ``AgentConflict`` / 409, an unknown one ``InvalidInput`` / 422;
  ``GET /v1/agents`` describes them.  ``TURNQ_CONTEXT_FACTORY`` builds the tools' context.
* Usage: each model call, per agent, cached and reasoning tokens, with the turn; summed
  per session and per user.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from shared.errors import AgentConflict, InvalidInput
from shared.status import TurnStatus
from tests.agents import BILLING_USAGE, TRIAGE_USAGE
from tests.support.deployments import Deployment, deployment
from tests.system.test_gateway_support import Api, is_terminal, sse_events

pytestmark = pytest.mark.system

USAGE_KEYS = ("requests", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")


@pytest.fixture(scope="module")
def support(stack_env: dict[str, str]) -> Iterator[Deployment]:
    with deployment(stack_env, "support", "tests.agents:support", gateway=True) as d:
        yield d


@pytest.fixture(scope="module")
def desks(stack_env: dict[str, str]) -> Iterator[Deployment]:
    factory = {"TURNQ_CONTEXT_FACTORY": "tests.agents:account_context"}
    with deployment(stack_env, "desks", "tests.agents:DESKS", gateway=True, **factory) as d:
        yield d


def call_usage(agent: str, tokens: tuple[int, int, int, int]) -> dict[str, Any]:
    """One model call's usage as the turn records it."""
    i, o, cached, reasoning = tokens
    return {
        "agent": agent,
        "requests": 1,
        "input_tokens": i,
        "cached_tokens": cached,
        "output_tokens": o,
        "reasoning_tokens": reasoning,
    }


def summed(calls: list[dict[str, Any]]) -> dict[str, int]:
    return {k: sum(c[k] for c in calls) for k in USAGE_KEYS}


def context_seen(output: str | None) -> dict[str, Any]:
    """The run context Billing's ``whoami`` tool reported (the answer quotes it)."""
    assert output is not None and output.startswith("billing: {"), output
    seen: dict[str, Any] = json.loads(output.removeprefix("billing: "))
    return seen


def tool_calls(items: list[dict[str, Any]]) -> list[str]:
    return [i["name"] for i in items if i.get("type") == "function_call"]


# ====================================================================== the Python client
def test_a_handoff_carries_over_and_tools_see_the_run_context(
    support: Deployment, uid: str
) -> None:
    client, session, user = support.client, f"help-{uid}", f"ann-{uid}"
    first = client.enqueue(
        session, user, "I have a billing question: who am I?", metadata={"order": 7, "vip": True}
    )
    done = client.wait(first.id, timeout=60)
    assert done.status is TurnStatus.SUCCEEDED, (done.error, support.logs())
    assert done.agent == "Billing" and done.metadata == {"order": 7, "vip": True}
    assert context_seen(done.output) == {
        "context": "TurnContext",
        "user_id": user,
        "session_id": session,
        "turn_id": first.id,
        "seq": 1,
        "attempt": 1,
        "entry_agent": "Triage",
        "active_agent": "Triage",  # where the turn started
        "metadata": {"order": 7, "vip": True},
    }
    # Usage, call by call: Triage handed off, Billing called whoami, then answered.
    calls = [
        call_usage("Triage", TRIAGE_USAGE),
        call_usage("Billing", BILLING_USAGE),
        call_usage("Billing", BILLING_USAGE),
    ]
    assert done.usage is not None and done.usage["calls"] == calls
    assert done.usage["by_agent"] == {
        "Triage": summed(calls[:1]),
        "Billing": summed(calls[1:]),
    }
    assert {k: done.usage[k] for k in USAGE_KEYS} == summed(calls)

    s = client.session(session, user)
    assert (s.entry_agent, s.active_agent) == ("Triage", "Billing")

    # The next turn starts at Billing: no Triage call, no second handoff.
    second = client.enqueue(session, user, "And who am I now?", metadata={"order": 8})
    again = client.wait(second.id, timeout=60)
    assert again.status is TurnStatus.SUCCEEDED, again.error
    assert again.agent == "Billing"
    seen = context_seen(again.output)
    assert (seen["user_id"], seen["seq"], seen["active_agent"]) == (user, 2, "Billing")
    assert seen["metadata"] == {"order": 8} and seen["turn_id"] == second.id
    assert again.usage is not None and list(again.usage["by_agent"]) == ["Billing"]
    assert again.usage["calls"] == [call_usage("Billing", BILLING_USAGE)] * 2

    history = client.history(session, user)
    assert tool_calls(history) == ["transfer_to_billing", "whoami", "whoami"]
    users = [i["content"] for i in history if i.get("role") == "user"]
    assert users == ["I have a billing question: who am I?", "And who am I now?"]

    # A third turn without a question for the tool: Billing still answers.
    third = client.wait(client.enqueue(session, user, "thanks").id, timeout=60)
    assert (third.status, third.agent, third.output) == (
        TurnStatus.SUCCEEDED,
        "Billing",
        "billing: thanks",
    )

    # Usage per session: the sum of its turns; per user: the sum of their sessions.
    turns = client.turns(session, user)
    per_session = {k: sum((t.usage or {}).get(k, 0) for t in turns) for k in USAGE_KEYS}
    s = client.session(session, user)
    assert {k: getattr(s, k) for k in USAGE_KEYS} == per_session
    other = client.wait(client.enqueue(f"other-{uid}", user, "hello").id, timeout=60)
    assert (other.agent, other.output) == ("Triage", "triage: hello")
    assert client.usage(user) == {
        "sessions": 2,
        **{k: per_session[k] + (other.usage or {})[k] for k in USAGE_KEYS},
    }
    assert client.usage(f"nobody-{uid}") == {"sessions": 0, **dict.fromkeys(USAGE_KEYS, 0)}


# ====================================================================== the HTTP gateway
def turn_events(api: Api, turn_id: str) -> list[dict[str, Any]]:
    with api.http.stream("GET", f"/v1/turns/{turn_id}/events") as r:
        assert r.status_code == 200, r.read()
        return [e["data"] for e in sse_events(r.iter_lines(), stop=is_terminal)]


def test_the_same_conversation_through_the_gateway(
    support: Deployment, database_url: str, uid: str
) -> None:
    user, session = f"bea-{uid}", f"web-{uid}"
    api = support.api(database_url, user)
    first = api.send(session, "billing: who am I?", metadata={"cart": ["a", "b"]})
    events = turn_events(api, first["turn_id"])
    handoffs = [e for e in events if e["type"] == "agent"]
    assert handoffs == [
        {"type": "agent", "agent": "Billing", "from": "Triage", "turn_id": first["turn_id"]}
    ], events
    assert events[-1]["status"] == "succeeded" and events[-1]["agent"] == "Billing"
    done = api.wait(first["turn_id"])
    assert done["agent"] == "Billing" and done["metadata"] == {"cart": ["a", "b"]}
    seen = context_seen(done["output"])
    assert (seen["user_id"], seen["session_id"], seen["metadata"]) == (
        user,
        session,
        {"cart": ["a", "b"]},
    )

    detail = api.expect(200, "GET", f"/v1/sessions/{session}")
    assert (detail["entry_agent"], detail["active_agent"]) == ("Triage", "Billing")

    second = api.send(session, "who am I, again?")
    events = turn_events(api, second["turn_id"])
    assert [e for e in events if e["type"] == "agent"] == []  # no handoff this time
    done = api.wait(second["turn_id"])
    assert done["agent"] == "Billing" and context_seen(done["output"])["seq"] == 2
    assert list(done["usage"]["by_agent"]) == ["Billing"]
    assert tool_calls(api.items(session)) == ["transfer_to_billing", "whoami", "whoami"]

    # Usage: the session's is the sum of its turns; GET /v1/usage sums the user's sessions.
    detail = api.expect(200, "GET", f"/v1/sessions/{session}")
    turns = [api.wait(t["turn_id"]) for t in (first, second)]
    per_session = {k: sum(t["usage"][k] for t in turns) for k in USAGE_KEYS}
    assert detail["usage"] == per_session
    assert per_session["cached_tokens"] == TRIAGE_USAGE[2] + 4 * BILLING_USAGE[2]
    assert per_session["reasoning_tokens"] == TRIAGE_USAGE[3] + 4 * BILLING_USAGE[3]
    assert api.expect(200, "GET", "/v1/usage") == {"sessions": 1, **per_session}


# ====================================================================== several entry agents
def test_a_mapping_deployment_binds_each_session_to_its_entry_agent(
    desks: Deployment, database_url: str, uid: str
) -> None:
    client, user = desks.client, f"cid-{uid}"
    # agent="billing" binds a new session: Billing answers at once (no Triage call).
    first = client.enqueue(
        f"b-{uid}", user, "who am I?", agent="billing", metadata={"tier": "gold"}
    )
    done = client.wait(first.id, timeout=60)
    assert done.status is TurnStatus.SUCCEEDED, (done.error, desks.logs())
    assert done.agent == "Billing" and done.usage is not None
    assert list(done.usage["by_agent"]) == ["Billing"]
    s = client.session(f"b-{uid}", user)
    assert (s.entry_agent, s.active_agent) == ("billing", "Billing")

    # TURNQ_CONTEXT_FACTORY: the tool saw the deployment's own context object.
    seen = context_seen(done.output)
    assert seen["context"] == "Account"
    assert (seen["user_id"], seen["account_id"], seen["tier"]) == (user, f"acct-{user}", "gold")
    assert seen["turn"]["entry_agent"] == "billing" and seen["turn"]["metadata"] == {"tier": "gold"}

    # Naming it again, or no agent at all, is fine; another one is a conflict; an unknown
    # one is invalid.  Refusals write nothing: the next accepted turn is seq 2.
    with pytest.raises(AgentConflict) as conflict:
        client.enqueue(f"b-{uid}", user, "hi", agent="triage")
    assert conflict.value.code == "agent_conflict" and conflict.value.entry_agent == "billing"
    with pytest.raises(InvalidInput) as invalid:
        client.enqueue(f"b-{uid}", user, "hi", agent="nope")
    assert invalid.value.field == "agent" and "billing, triage" in str(invalid.value)
    assert client.enqueue(f"b-{uid}", user, "who am I?", agent="billing").seq == 2
    third = client.enqueue(f"b-{uid}", user, "thanks")
    assert client.wait(third.id, timeout=60).output == "billing: thanks"
    assert [t.seq for t in client.turns(f"b-{uid}", user)] == [1, 2, 3]

    # No agent named: the default entry agent (the first key); it may be named later.
    t = client.enqueue(f"t-{uid}", user, "hello there")
    assert client.wait(t.id, timeout=60).output == "triage: hello there"
    assert client.session(f"t-{uid}", user).entry_agent == "triage"
    assert client.enqueue(f"t-{uid}", user, "hi", agent="triage").seq == 2
    with pytest.raises(AgentConflict):
        client.enqueue(f"t-{uid}", user, "hi", agent="billing")

    # The same through HTTP.
    api = desks.api(database_url, user)
    problem = api.expect(
        409, "POST", f"/v1/sessions/b-{uid}/turns", json={"content": "x", "agent": "triage"}
    )
    assert problem["code"] == "agent_conflict" and problem["entry_agent"] == "billing"
    problem = api.expect(
        422, "POST", f"/v1/sessions/b-{uid}/turns", json={"content": "x", "agent": "nope"}
    )
    assert problem["code"] == "invalid_input" and problem["errors"][0]["field"] == "agent"
    fresh = api.send(f"h-{uid}", "who am I?", agent="billing")
    assert context_seen(api.wait(fresh["turn_id"])["output"])["turn"]["entry_agent"] == "billing"
    assert [t.seq for t in client.turns(f"b-{uid}", user)] == [1, 2, 3]


def test_the_agents_are_described(desks: Deployment, database_url: str, uid: str) -> None:
    described = desks.api(database_url, f"ui-{uid}").expect(200, "GET", "/v1/agents")["agents"]
    assert described == desks.client.agents()
    by_name = {a["name"]: a for a in described}
    assert list(by_name) == ["Triage", "Billing"]  # entry agents first, each agent once
    triage, billing = by_name["Triage"], by_name["Billing"]
    assert (triage["entry"], triage["default"], triage["handoffs"]) == ("triage", True, ["Billing"])
    assert (billing["entry"], billing["default"], billing["handoffs"]) == ("billing", False, [])
    assert billing["description"] == "Plans, invoices and refunds."
    tools = {t["name"]: t for t in billing["tools"]}
    assert tools["whoami"]["needs_approval"] is False and tools["refund"]["needs_approval"] is True
    assert tools["refund"]["kind"] == "function" and tools["refund"]["description"]
    assert [t["name"] for t in triage["tools"]] == ["whoami"]
