"""Human approvals across processes (I13): a turn pauses for a person, any worker resumes it.

Real worker processes on the demo support desk: Billing's ``request_refund`` needs a
person's approval.  The paused turn holds no lock and no slot; the decision is recorded
once; the resumed run lands on whichever worker is free.
"""

from __future__ import annotations

from typing import Any

import pytest

from producer import Client
from shared.errors import ApprovalConflict, TurnNotFound
from shared.status import TurnStatus
from tests.support.servers import wait_until

pytestmark = pytest.mark.system

DEMO = {"TURNQ_AGENT": "shared.demo_agent:build_agent"}
REFUND = "I have a billing question: can I get a refund?"


def _paused(client: Client, session: str, user: str) -> Any:
    turn = client.enqueue(session, user, REFUND)
    wait_until(
        lambda: client.get_turn(turn.id).status is TurnStatus.WAITING,
        timeout=60,
        message="the turn never paused for its approval",
    )
    return client.get_turn(turn.id)


def test_pause_then_approve_resumes_on_another_worker(
    client: Client, start_worker: Any, uid: str
) -> None:
    user, session = f"u-{uid}", f"s-{uid}"
    first = start_worker("pauser", **DEMO)
    waiting = _paused(client, session, user)
    pending = [i for i in waiting.pending_items or [] if i.get("approval") == "pending"]
    assert [i["name"] for i in pending] == ["request_refund"]
    assert client.history(session, user)[-1]["approval"] == "pending"  # shown as pending
    assert client.session(session, user).item_count == 0  # nothing committed yet
    listed, _ = client.approvals(user)
    assert [(a["tool"], a["call_id"]) for a in listed] == [
        ("request_refund", pending[0]["call_id"])
    ]
    assert listed[0]["message_text"] == REFUND
    # A later message queues behind the waiting turn (FIFO).
    later = client.enqueue(session, user, "What is the weather in Austin?")
    first.stop()  # nobody is left holding anything: the paused turn needs no worker
    start_worker("resumer", **DEMO)
    assert client.get_turn(later.id).status is TurnStatus.QUEUED

    decided = client.approve(waiting.id, user, pending[0]["call_id"])
    assert decided.resumed and decided.decisions == ["approved"]
    again = client.approve(waiting.id, user, pending[0]["call_id"])  # idempotent
    assert again.decisions == ["approved"] and not again.resumed
    with pytest.raises(ApprovalConflict):
        client.reject(waiting.id, user, pending[0]["call_id"])

    done = client.wait(waiting.id, timeout=60)
    assert done.status is TurnStatus.SUCCEEDED, done
    assert done.output and "refund of" in done.output and user in done.output
    assert client.wait(later.id, timeout=60).status is TurnStatus.SUCCEEDED
    outputs = [i.get("output") for i in client.history(session, user) if "output" in i]
    assert sum("refund of" in str(o) for o in outputs) == 1  # the tool ran once
    assert not client.approvals(user)[0]  # nothing pending any more


def test_reject_with_a_message_the_model_sees(client: Client, start_worker: Any, uid: str) -> None:
    user, session = f"u-{uid}", f"s-{uid}"
    start_worker("w", **DEMO)
    waiting = _paused(client, session, user)
    call = next(i for i in waiting.pending_items or [] if i.get("approval") == "pending")
    client.reject(waiting.id, user, call["call_id"], "refunds are handled by phone")
    done = client.wait(waiting.id, timeout=60)
    assert done.status is TurnStatus.SUCCEEDED
    assert done.output and "refunds are handled by phone" in done.output
    assert "refund of" not in str(client.history(session, user))


def test_another_users_plain_key_cannot_decide(client: Client, start_worker: Any, uid: str) -> None:
    user, session = f"u-{uid}", f"s-{uid}"
    start_worker("w", **DEMO)
    waiting = _paused(client, session, user)
    call = next(i for i in waiting.pending_items or [] if i.get("approval") == "pending")
    with pytest.raises(TurnNotFound):
        client.approve(waiting.id, f"mallory-{uid}", call["call_id"])
    assert client.get_turn(waiting.id).status is TurnStatus.WAITING
    assert client.approvals(f"mallory-{uid}")[0] == []
    # An approver sees every user's pending approvals and may decide them.
    everyone, _ = client.approvals(f"desk-{uid}", approver=True)
    assert waiting.id in {a["turn_id"] for a in everyone}
    decided = client.decide(
        waiting.id, f"desk-{uid}", [(call["call_id"], True, None)], approver=True
    )
    assert decided.resumed
    assert client.wait(waiting.id, timeout=60).status is TurnStatus.SUCCEEDED
