"""Human approvals across processes (I13): a turn pauses for a person, any worker resumes it.

Real worker processes on the demo support desk: Billing's ``request_refund`` needs a
person's approval.  The paused turn holds no lock and no slot; the decision is recorded
once; the resumed run lands on whichever worker is free.
"""

from __future__ import annotations

import json
import secrets
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from producer import Client, TurnResult
from producer.gateway.keys import create_key
from shared.errors import ApprovalConflict, ApprovalNotPending, TurnNotFound
from shared.settings import get_settings
from shared.status import ErrorCode, TurnStatus
from tests.support.browser import Browser
from tests.support.servers import free_port, wait_until
from tests.support.workers import WorkerProcess
from tests.system.conftest import FAST_RECOVERY
from tests.system.test_beat_jobs import run_sql, scrape, value
from tests.system.test_gateway_support import Api, GatewayProcess, is_terminal, sse_events

pytestmark = pytest.mark.system

DEMO = {"TURNQ_AGENT": "shared.demo_agent:build_agent"}
APPROVALS_AGENT = "tests.agents:approvals"
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


# --- the approval desk: tests.agents:approvals on one worker, a gateway, counted side effects
#
# Every test below shares one worker (``gated`` and ``expiring`` agents, whose tools append
# a line per run to a file) and one gateway.  The tests above start their own workers
# (the demo agent) and stop them; workers of a namespace share the turns queue, so the
# desk is created only after them (file order), never beside one.


@dataclass
class Desk:
    worker: WorkerProcess
    gateway: GatewayProcess
    effects: Path  # one JSON line per tool run: {"tool", "turn_id"}
    inputs: Path  # one JSON line per model call: {"text", "input"}
    metrics_port: int
    database_url: str

    def runs(self, turn_id: str, tool: str | None = None) -> int:
        """How often the tools ran for the turn (in any worker process)."""
        lines = self.effects.read_text().splitlines() if self.effects.exists() else []
        return sum(
            1
            for line in lines
            if json.loads(line)["turn_id"] == turn_id
            and (tool is None or json.loads(line)["tool"] == tool)
        )

    def model_inputs(self, text: str) -> list[Any]:
        """What the model was shown, call by call, for the turn whose message is ``text``."""
        lines = self.inputs.read_text().splitlines() if self.inputs.exists() else []
        return [json.loads(line)["input"] for line in lines if json.loads(line)["text"] == text]

    def api(self, user: str, *scopes: str) -> Api:
        return Api(self.gateway.url, create_key(self.database_url, user, "approvals", scopes))

    def metric(self, name: str, **labels: str) -> float:
        return value(scrape(self.metrics_port), name, **labels)


@pytest.fixture(scope="module")
def desk(
    stack_env: dict[str, str], database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Desk]:
    folder = tmp_path_factory.mktemp("approvals")
    port = free_port()
    env = {
        **stack_env, **FAST_RECOVERY, "TURNQ_AGENT": APPROVALS_AGENT,
        "TEST_SIDE_EFFECTS": str(folder / "effects.jsonl"),
        "TEST_INPUT_LOG": str(folder / "inputs.jsonl"), "TURNQ_METRICS_PORT": str(port),
    }  # fmt: skip
    gateway = GatewayProcess(
        {**stack_env, "TURNQ_GATEWAY_RATE_PER_S": "1000", "TURNQ_GATEWAY_RATE_BURST": "1000"},
        "gateway-approvals",
    )
    worker = WorkerProcess(env, name=f"desk-{secrets.token_hex(3)}", concurrency=20)
    gateway.start()
    try:
        worker.start()
        yield Desk(
            worker, gateway, folder / "effects.jsonl", folder / "inputs.jsonl", port,
            database_url,
        )  # fmt: skip
    finally:
        worker.stop()
        gateway.stop()
    for proc in (worker, gateway):
        assert "Traceback" not in proc.log_text(), proc.log_text()[-3000:]


@pytest.fixture
def client(stack_env: dict[str, str]) -> Iterator[Client]:
    """A client that knows the desk's agents (``agent="expiring"`` is checked here)."""
    settings = get_settings().model_copy(update={"agent": APPROVALS_AGENT})
    with Client.from_settings(settings) as c:
        yield c


def waiting(
    client: Client, session: str, user: str, text: str, **kw: Any
) -> tuple[TurnResult, list[dict[str, Any]]]:
    """Send ``text`` and wait until its turn pauses; returns it and its pending calls."""
    turn = client.enqueue(session, user, text, **kw)
    wait_until(
        lambda: client.get_turn(turn.id).status is TurnStatus.WAITING,
        timeout=60,
        message=f"the turn never paused ({client.get_turn(turn.id)})",
    )
    paused = client.get_turn(turn.id)
    return paused, [i for i in paused.pending_items or [] if i.get("approval") == "pending"]


def test_two_pending_calls_decided_in_two_requests(desk: Desk, client: Client, uid: str) -> None:
    user, session, text = f"u-{uid}", f"two-{uid}", f"[two] order {uid}"
    turn, calls = waiting(client, session, user, text)
    assert [c["name"] for c in calls] == ["charge", "ship"]
    listed, _ = client.approvals(user)
    assert sorted((a["tool"], a["decision"]) for a in listed) == [
        ("charge", None), ("ship", None),
    ]  # fmt: skip

    first = client.approve(turn.id, user, calls[0]["call_id"])
    assert first.decisions == ["approved"] and not first.resumed
    assert first.turn.status is TurnStatus.WAITING  # one call still waits
    assert [a["tool"] for a in client.approvals(user)[0]] == ["ship"]
    # Nothing runs between the two decisions: the turn holds no worker and no lock.
    assert client.get_turn(turn.id).status is TurnStatus.WAITING and desk.runs(turn.id) == 0

    second = client.reject(turn.id, user, calls[1]["call_id"], "out of stock")
    assert second.decisions == ["rejected"] and second.resumed
    assert second.turn.status is TurnStatus.QUEUED
    done = client.wait(turn.id, timeout=60)
    assert done.status is TurnStatus.SUCCEEDED, done
    assert done.output == (
        f"done: {text} | charged order {uid} | the user rejected this tool call: out of stock"
    )
    assert (desk.runs(turn.id, "charge"), desk.runs(turn.id, "ship")) == (1, 0)
    history = client.history(session, user)
    assert [i.get("type") or i.get("role") for i in history] == [
        "user", "function_call", "function_call", "function_call_output",
        "function_call_output", "message",
    ]  # fmt: skip
    assert not [i for i in history if "approval" in i]  # committed: nothing marked pending
    assert all(a["decision"] for a in client.approvals(user, pending_only=False)[0])


def _decide(api: Api, turn_id: str, call_id: str, approve: bool) -> httpx.Response:
    body = {"decisions": [{"call_id": call_id, "approve": approve, "message": "no"}]}
    return api.request("POST", f"/v1/turns/{turn_id}/approvals", json=body)


def _at_once(*requests: Callable[[], httpx.Response]) -> list[httpx.Response]:
    """Send the requests from their own threads, released together."""
    gate = threading.Barrier(len(requests))

    def go(send: Callable[[], httpx.Response]) -> httpx.Response:
        gate.wait()
        return send()

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(go, requests))


def test_the_same_decision_sent_twice_at_once_applies_once(
    desk: Desk, client: Client, uid: str
) -> None:
    user = f"u-{uid}"
    paused = [waiting(client, f"race-{uid}-{n}", user, f"[one] race {n} {uid}") for n in range(4)]
    apis = [desk.api(user), desk.api(user)]  # two clients, two connections
    try:
        # Two clients approve the same call at once, on every turn: one records it and
        # resumes the turn, the other finds it recorded (the same answer, nothing more).
        for turn, [call] in paused[:3]:
            answers = _at_once(
                *(lambda a=a, t=turn.id, c=call["call_id"]: _decide(a, t, c, True) for a in apis)
            )
            assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
            bodies = [r.json() for r in answers]
            assert [b["decisions"] for b in bodies] == [["approved"], ["approved"]]
            assert sorted(b["resumed"] for b in bodies) == [False, True]
        # Approve and reject at once: one wins, the other is told what was recorded.
        turn, [call] = paused[3]
        answers = _at_once(
            lambda: _decide(apis[0], turn.id, call["call_id"], True),
            lambda: _decide(apis[1], turn.id, call["call_id"], False),
        )
        assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
        lost = next(r.json() for r in answers if r.status_code == 409)
        won = next(r.json() for r in answers if r.status_code == 200)
        assert lost["code"] == "approval_conflict" and lost["turn_id"] == turn.id
        assert lost["turn_status"] == won["decisions"][0]  # what was recorded
    finally:
        for a in apis:
            a.close()
    for turn, _ in paused:
        assert client.wait(turn.id, timeout=60).status is TurnStatus.SUCCEEDED
    assert [desk.runs(t.id) for t, _ in paused[:3]] == [1, 1, 1]  # exactly once, each
    assert desk.runs(paused[3][0].id) == (1 if won["decisions"] == ["approved"] else 0)
    assert "charged order" in (client.get_turn(paused[0][0].id).output or "")


def test_undecided_approvals_expire_by_beat(
    desk: Desk, client: Client, start_beat: Any, uid: str
) -> None:
    """``expiring``'s calls time out after 2 s (its module's TURNQ_APPROVAL_TTL_S); the
    model is told and answers.  ``gated`` keeps the deployment's TTL (a day)."""
    user = f"u-{uid}"
    before = desk.metric("turnq_approvals_decided_total", decision="expired")
    kept, _ = waiting(client, f"keep-{uid}", user, f"[one] keep {uid}")
    text = f"[two] expire {uid}"
    gone, calls = waiting(client, f"expire-{uid}", user, text, agent="expiring")
    assert len(calls) == 2
    start_beat()
    done = client.wait(gone.id, timeout=60)
    assert done.status is TurnStatus.SUCCEEDED, done
    timed_out = "approval timed out: nobody approved this tool call in time, so it did not run"
    assert done.output == f"done: {text} | {timed_out} | {timed_out}"
    assert desk.runs(gone.id) == 0
    expired = client.approvals(user, pending_only=False)[0]
    mine = {(a["tool"], a["decision"], a["decided_by"]) for a in expired if a["turn_id"] == gone.id}
    assert mine == {("charge", "expired", "turnq:expiry"), ("ship", "expired", "turnq:expiry")}
    # The reaper (on the worker) counted both; the day-long approval is still pending.
    wait_until(
        lambda: desk.metric("turnq_approvals_decided_total", decision="expired") == before + 2,
        timeout=10,
        message="the expiry metric did not count both calls",
    )
    assert client.get_turn(kept.id).status is TurnStatus.WAITING
    assert client.cancel(kept.id, user).status is TurnStatus.CANCELLED


@pytest.mark.parametrize("strategy", ["interrupt", "rollback"])
def test_interrupt_and_rollback_cancel_a_waiting_turn(
    desk: Desk, client: Client, uid: str, strategy: str
) -> None:
    """The new message cancels the waiting turn (its approvals are closed) and runs.  Under
    ``interrupt`` the transcript keeps what the waiting turn finished -- its message and the
    tool that already ran -- without the call that was never decided; under ``rollback``
    nothing of it is kept, nor shown to the model."""
    user, session = f"u-{uid}", f"{strategy}-{uid}"
    text = f"[twice] {strategy} {uid}"
    turn, [charge] = waiting(client, session, user, text)
    client.approve(turn.id, user, charge["call_id"])
    wait_until(
        lambda: client.get_turn(turn.id).status is TurnStatus.WAITING and desk.runs(turn.id) == 1,
        timeout=60,
        message="the turn never paused a second time",
    )
    [ship] = [
        i for i in client.get_turn(turn.id).pending_items or [] if i.get("approval") == "pending"
    ]
    later_text = f"never mind {uid}"
    later = client.enqueue(session, user, later_text, multitask_strategy=strategy)
    cancelled = client.get_turn(turn.id)
    assert cancelled.status is TurnStatus.CANCELLED and cancelled.pending_items is None
    with pytest.raises(ApprovalNotPending):
        client.approve(turn.id, user, ship["call_id"])
    closed = [a for a in client.approvals(user, pending_only=False)[0] if a["turn_id"] == turn.id]
    assert [(a["tool"], a["decision"]) for a in closed] == [
        ("charge", "approved"), ("ship", "cancelled"),
    ]  # fmt: skip
    done = client.wait(later.id, timeout=60)
    assert done.status is TurnStatus.SUCCEEDED, done
    history = client.history(session, user)
    [seen] = desk.model_inputs(later_text)
    if strategy == "rollback":
        assert history[0] == {"role": "user", "content": later_text}, history
        assert text not in json.dumps(seen) and charge["call_id"] not in json.dumps(seen)
    else:
        kept = history[: len(history) - 2]
        assert [i.get("type") or i.get("role") for i in kept] == [
            "user", "function_call", "function_call_output",
        ]  # fmt: skip
        assert kept[0] == {"role": "user", "content": text}
        assert kept[1]["call_id"] == charge["call_id"] and "charged order" in kept[2]["output"]
        assert text in json.dumps(seen) and charge["call_id"] in json.dumps(seen)
    assert ship["call_id"] not in json.dumps(history) and ship["call_id"] not in json.dumps(seen)
    assert history[-2:] == [
        {"role": "user", "content": later_text},
        {"id": history[-1]["id"], "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": done.output, "annotations": [],
                      "logprobs": []}]},
    ]  # fmt: skip
    assert desk.runs(turn.id) == 1  # ship never ran


def test_reject_strategy_names_the_waiting_turn(desk: Desk, client: Client, uid: str) -> None:
    user, session = f"u-{uid}", f"busy-{uid}"
    turn, [call] = waiting(client, session, user, f"[one] busy {uid}")
    api = desk.api(user)
    try:
        r = api.request(
            "POST", f"/v1/sessions/{session}/turns",
            json={"content": "are you there?", "multitask_strategy": "reject"},
        )  # fmt: skip
        assert r.status_code == 409, r.text
        problem = r.json()
        assert problem["code"] == "session_busy"
        assert (problem["turn_id"], problem["turn_status"]) == (turn.id, "waiting")
        assert turn.id in problem["detail"]
        # Nothing changed: the turn still waits, and its decision still resumes it.
        assert client.get_turn(turn.id).status is TurnStatus.WAITING
        assert [t.id for t in client.turns(session, user)] == [turn.id]
        client.approve(turn.id, user, call["call_id"])
        assert client.wait(turn.id, timeout=60).status is TurnStatus.SUCCEEDED
    finally:
        api.close()


def test_cancel_a_waiting_turn(desk: Desk, client: Client, uid: str) -> None:
    user, session = f"u-{uid}", f"cancel-{uid}"
    turn, [call] = waiting(client, session, user, f"[one] cancel me {uid}")
    behind = client.enqueue(session, user, f"and then this {uid}")
    api = desk.api(user)
    try:
        r = api.request("POST", f"/v1/turns/{turn.id}/cancel")
        assert r.status_code == 200, r.text  # cancelled at once: nobody runs it
        assert r.json()["status"] == "cancelled" and r.json()["pending_items"] is None
        r = _decide(api, turn.id, call["call_id"], True)
        assert r.status_code == 409 and r.json()["code"] == "approval_not_pending", r.text
        assert r.json()["turn_status"] == "cancelled"
        assert api.expect(200, "GET", "/v1/approvals")["approvals"] == []
    finally:
        api.close()
    [closed] = client.approvals(user, pending_only=False)[0]
    assert (closed["decision"], closed["decided_by"]) == ("cancelled", "turnq:cancel")
    # The line moves on at once (no reaper runs here): the turn behind it runs.  The cancel
    # (interrupt, the default) kept what the turn finished: its message, not the call
    # nobody decided.
    assert client.wait(behind.id, timeout=30).status is TurnStatus.SUCCEEDED
    cancelled = client.get_turn(turn.id)
    assert cancelled.status is TurnStatus.CANCELLED
    assert cancelled.error == "cancelled while waiting for an approval"
    assert desk.runs(turn.id) == 0
    history = client.history(session, user)
    assert history[:2] == [
        {"role": "user", "content": f"[one] cancel me {uid}"},
        {"role": "user", "content": f"and then this {uid}"},
    ]
    assert call["call_id"] not in json.dumps(history) and len(history) == 3


def test_pauses_again_on_the_next_approval_after_a_resume(
    desk: Desk, client: Client, uid: str
) -> None:
    user, session, text = f"u-{uid}", f"again-{uid}", f"[twice] again {uid}"
    turn, [charge] = waiting(client, session, user, text)
    assert client.approve(turn.id, user, charge["call_id"]).resumed
    wait_until(
        lambda: client.get_turn(turn.id).status is TurnStatus.WAITING and desk.runs(turn.id) == 1,
        timeout=60,
        message="the turn never paused a second time",
    )
    second = client.get_turn(turn.id)
    marked = {
        i["call_id"]: i.get("approval")
        for i in second.pending_items or []
        if i.get("type") == "function_call"
    }
    ship = next(i for i in second.pending_items or [] if i.get("name") == "ship")
    assert marked == {charge["call_id"]: None, ship["call_id"]: "pending"}
    # The first call's decision stays recorded; only the new one is pending.
    decisions = client.approvals(user, pending_only=False)[0]
    assert [(a["tool"], a["decision"]) for a in decisions] == [
        ("charge", "approved"),
        ("ship", None),
    ]
    assert client.session(session, user).item_count == 0  # still nothing committed
    assert client.approve(turn.id, user, ship["call_id"]).resumed
    done = client.wait(turn.id, timeout=60)
    assert done.status is TurnStatus.SUCCEEDED
    assert done.output == f"done: {text} | charged order {uid} | shipped order {uid}"
    assert (desk.runs(turn.id, "charge"), desk.runs(turn.id, "ship")) == (1, 1)
    assert done.usage and done.usage["requests"] == 3  # cumulative over both pauses
    assert client.session(session, user).requests == 3


def test_approval_routes_end_to_end(desk: Desk, client: Client, uid: str) -> None:
    owner, session = f"alice-{uid}", f"routes-{uid}"
    turn, [call] = waiting(client, session, owner, f"[one] routes {uid}")
    alice, mallory, reviewer = (
        desk.api(owner), desk.api(f"mallory-{uid}"), desk.api(f"desk-{uid}", "approver"),
    )  # fmt: skip
    decide = f"/v1/turns/{turn.id}/approvals"
    approve = {"decisions": [{"call_id": call["call_id"], "approve": True}]}
    try:
        # The owner sees their own; another user's plain key sees nothing of it.
        mine = alice.expect(200, "GET", "/v1/approvals")["approvals"]
        assert [(a["turn_id"], a["call_id"], a["tool"]) for a in mine] == [
            (turn.id, call["call_id"], "charge"),
        ]  # fmt: skip
        assert mine[0]["session_id"] == session and mine[0]["user_id"] == owner
        assert mine[0]["message_text"] == f"[one] routes {uid}"
        assert json.loads(mine[0]["arguments"]) == {"order": uid}
        assert mallory.expect(200, "GET", "/v1/approvals")["approvals"] == []
        # Deciding another user's approval with a plain key: the same 404 as no such turn.
        foreign = mallory.request("POST", decide, json=approve)
        missing = mallory.request("POST", f"/v1/turns/{uuid.uuid4()}/approvals", json=approve)
        assert foreign.status_code == missing.status_code == 404
        assert foreign.content == missing.content and foreign.json()["code"] == "turn_not_found"

        # An approver key sees every user's approvals and decides them...
        everyone = reviewer.expect(200, "GET", "/v1/approvals?status=pending&limit=200")
        assert (turn.id, call["call_id"]) in {
            (a["turn_id"], a["call_id"]) for a in everyone["approvals"]
        }
        # ... but reads nothing else of theirs: the session is a 404 like a missing one.
        theirs = reviewer.request("GET", f"/v1/sessions/{session}")
        nowhere = reviewer.request("GET", f"/v1/sessions/no-such-{uid}")
        assert theirs.status_code == nowhere.status_code == 404
        assert theirs.content == nowhere.content
        for path in (f"/v1/turns/{turn.id}", f"/v1/sessions/{session}/items"):
            assert reviewer.request("GET", path).status_code == 404, path
        assert alice.request("GET", f"/v1/sessions/{session}").status_code == 200

        # An unknown call: 404 approval_not_found; invalid bodies: 422.
        r = reviewer.request(
            "POST", decide, json={"decisions": [{"call_id": "call_nope", "approve": True}]}
        )
        assert (r.status_code, r.json()["code"]) == (404, "approval_not_found"), r.text
        invalid = [
            {"decisions": []},
            {"decisions": [{"call_id": "", "approve": True}]},
            {"decisions": [{"call_id": "x", "approve": "maybe"}]},
            {"nope": 1},
        ]
        for bad in invalid:
            r = reviewer.request("POST", decide, json=bad)
            assert (r.status_code, r.json()["code"]) == (422, "invalid_input"), (bad, r.text)

        first = reviewer.expect(200, "POST", decide, json=approve)
        assert first["decisions"] == ["approved"] and first["resumed"] is True
        assert first["turn"]["turn_id"] == turn.id and first["turn"]["status"] == "queued"
        again = reviewer.expect(200, "POST", decide, json=approve)  # idempotent
        assert again["decisions"] == ["approved"] and again["resumed"] is False
        r = alice.request(
            "POST", decide, json={"decisions": [{"call_id": call["call_id"], "approve": False}]}
        )
        assert (r.status_code, r.json()["code"]) == (409, "approval_conflict"), r.text
        assert r.json()["turn_status"] == "approved"

        assert client.wait(turn.id, timeout=60).status is TurnStatus.SUCCEEDED
        # The decision is on record, with who made it; nothing is pending any more.
        [record] = alice.expect(200, "GET", "/v1/approvals?status=all")["approvals"]
        assert (record["decision"], record["decided_by"]) == ("approved", f"desk-{uid}")
        assert alice.expect(200, "GET", "/v1/approvals")["approvals"] == []
        assert desk.runs(turn.id) == 1
    finally:
        for a in (alice, mallory, reviewer):
            a.close()


def test_approval_not_pending_once_the_turn_moved_on(desk: Desk, client: Client, uid: str) -> None:
    """A turn with two calls: deciding the first is fine; after the turn was cancelled, the
    second is 409 ``approval_not_pending`` (the first's same decision is still 200)."""
    user = f"u-{uid}"
    turn, calls = waiting(client, f"moved-{uid}", user, f"[two] moved {uid}")
    api = desk.api(user)
    try:
        assert _decide(api, turn.id, calls[0]["call_id"], True).status_code == 200
        client.cancel(turn.id, user)
        r = _decide(api, turn.id, calls[1]["call_id"], True)
        assert (r.status_code, r.json()["code"]) == (409, "approval_not_pending"), r.text
        assert r.json()["turn_status"] == "cancelled"
        assert _decide(api, turn.id, calls[0]["call_id"], True).status_code == 200
    finally:
        api.close()


def test_events_show_the_pause_and_the_decisions(desk: Desk, client: Client, uid: str) -> None:
    user, session = f"u-{uid}", f"sse-{uid}"
    api = desk.api(user)
    try:
        accepted = api.send(session, f"[two] events {uid}")
        turn_id = accepted["turn_id"]
        events: list[dict[str, Any]] = []

        def read() -> None:
            with api.http.stream("GET", f"/v1/turns/{turn_id}/events") as r:
                assert r.status_code == 200
                events.extend(sse_events(r.iter_lines(), stop=is_terminal))

        with ThreadPoolExecutor(1) as pool:
            reading = pool.submit(read)
            paused = api.wait_status(turn_id, "waiting", timeout=60)
            calls = [i for i in paused["pending_items"] if i.get("approval") == "pending"]
            for call, approve in zip(calls, (True, False), strict=True):
                body = {"decisions": [{"call_id": call["call_id"], "approve": approve}]}
                api.expect(200, "POST", f"/v1/turns/{turn_id}/approvals", json=body)
            reading.result(timeout=60)
    finally:
        api.close()
    names = [
        (e["event"], e["data"].get("status") or e["data"].get("name") or e["data"].get("tool"))
        for e in events
    ]
    asked = [e["data"] for e in events if e["event"] == "approval_required"]
    assert [(a["tool"], a["call_id"]) for a in asked] == [(c["name"], c["call_id"]) for c in calls]
    assert all(
        json.loads(a["arguments"]) == {"order": uid} and a["agent"] == "gated" for a in asked
    )
    decided = [
        (e["data"]["call_id"], e["data"]["decision"])
        for e in events
        if e["event"] == "approval_decided"
    ]
    assert decided == [(calls[0]["call_id"], "approved"), (calls[1]["call_id"], "rejected")]
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses == ["running", "waiting", "running", "succeeded"], names
    order = [e["event"] for e in events]
    assert order.index("approval_required") < order.index("approval_decided")
    waiting_at = next(i for i, e in enumerate(events) if e["data"].get("status") == "waiting")
    assert order[waiting_at - 2 : waiting_at] == ["approval_required", "approval_required"]
    assert all(e["data"]["turn_id"] == turn_id for e in events)


def test_a_saved_state_that_cannot_be_loaded_fails_state_unreadable(
    desk: Desk, client: Client, uid: str
) -> None:
    user, session = f"u-{uid}", f"corrupt-{uid}"
    turn, [call] = waiting(client, session, user, f"[one] corrupt {uid}")
    run_sql(
        desk.database_url,
        "UPDATE turns SET run_state = jsonb_set(run_state, '{state}', "
        """'{"$schemaVersion": "1.21", "current_agent": {"name": "gated"}, "garbage": 1}') """
        "WHERE id = :id",
        id=turn.id,
    )
    client.approve(turn.id, user, call["call_id"])
    done = client.wait(turn.id, timeout=60)
    assert (done.status, done.error_code) == (TurnStatus.FAILED, ErrorCode.STATE_UNREADABLE)
    assert done.error and "saved state could not be loaded" in done.error, done.error
    assert desk.runs(turn.id) == 0  # the approved tool did not run from a state nobody read
    # The session goes on: nothing of the failed turn is in it, and the next turn runs.
    nxt = client.enqueue(session, user, f"still there {uid}")
    assert client.wait(nxt.id, timeout=60).status is TurnStatus.SUCCEEDED
    assert f"corrupt {uid}" not in json.dumps(client.history(session, user))


# --- the reviewer page (/review) in headless Chromium --------------------------------


def test_review_page_is_plain_files_behind_a_strict_policy(desk: Desk) -> None:
    page = httpx.get(f"{desk.gateway.url}/review", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    for rule in ("default-src 'none'", "script-src 'self'", "connect-src 'self'",
                 "form-action 'none'", "frame-ancestors 'none'"):  # fmt: skip
        assert rule in csp, csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, nothing remote
    for asset, kind in (("review.js", "text/javascript"), ("review.css", "text/css")):
        r = httpx.get(f"{desk.gateway.url}/review/{asset}", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), asset
        assert r.headers["content-security-policy"] == csp
    script = httpx.get(f"{desk.gateway.url}/review/review.js", timeout=10).text
    for sink in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    # Not part of the API's schema (schemathesis fuzzes what is).
    paths = httpx.get(f"{desk.gateway.url}/openapi.json", timeout=10).json()["paths"]
    assert not [p for p in paths if p.startswith("/review")]


def test_review_page_approve_and_reject_in_a_real_browser(
    desk: Desk, client: Client, uid: str, tmp_path: Path
) -> None:
    """A reviewer signs in with an approver key, sees other users' pending calls (with the
    user's message, shown as text even when it looks like HTML), approves one and rejects
    another with a reason; both turns then finish through the real worker."""
    hostile = f'<img src=x onerror="window.pwned=1"><b>bold</b> {uid}'
    first, [charge] = waiting(client, f"page-{uid}", f"alice-{uid}", f"[one] {hostile}")
    second, [other] = waiting(client, f"page2-{uid}", f"bob-{uid}", f"[one] second {uid}")
    reviewer = f"reviewer-{uid}"
    key = create_key(desk.database_url, reviewer, "review page", ["approver"])
    row = f"tr[data-turn='{first.id}']"
    row2 = f"tr[data-turn='{second.id}']"
    with Browser(tmp_path) as page:
        page.goto(f"{desk.gateway.url}/review")
        assert page.evaluate("document.querySelector('#login').hidden") is False
        page.type_into("#key", key)
        page.click("#signin")
        page.wait_for(f"document.querySelector({json.dumps(row2)}) !== null")

        shot = page.screenshot(tmp_path / "review-pending.png")
        assert shot[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", shot[16:24]) == (1400, 900)
        assert len(shot) > 20_000, f"{len(shot)} bytes: an empty page?"
        text = page.evaluate(f"document.querySelector({json.dumps(row)}).innerText")
        for part in (f"alice-{uid}", f"page-{uid}", "charge", "agent gated", hostile,
                     f'"order": "{uid}"', "s ago", "Approve", "Reject"):  # fmt: skip
            assert part in text, (part, text)
        # The user's text is text: no element was made of it, nothing of it ran.
        made = json.dumps(f"{row} img, {row} b")
        assert page.evaluate(f"document.querySelectorAll({made}).length") == 0
        assert page.evaluate("window.pwned === undefined") is True
        # The key is in this tab's session storage only: not in the URL, nor anywhere else.
        assert key not in page.evaluate("location.href")
        assert page.evaluate(f"sessionStorage.getItem('turnq.review.key') === {json.dumps(key)}")
        assert page.evaluate("localStorage.length + document.cookie.length") == 0

        page.click(f"{row} button.approve")
        done = client.wait(first.id, timeout=60)
        assert done.status is TurnStatus.SUCCEEDED and "charged order" in (done.output or "")
        page.type_into(f"{row2} input.reason", "not today")
        page.click(f"{row2} button.reject")
        rejected = client.wait(second.id, timeout=60)
        assert rejected.output and "the user rejected this tool call: not today" in rejected.output
        # Live refresh: both rows leave the list on the next poll.
        page.wait_for(
            f"document.querySelector({json.dumps(row)}) === null"
            f" && document.querySelector({json.dumps(row2)}) === null",
            timeout=10,
        )
        assert not [line for line in page.console if line.startswith("exception")], page.console
    records = {
        a["turn_id"]: (a["decision"], a["decided_by"], a["message"])
        for a in client.approvals(reviewer, approver=True, pending_only=False, limit=200)[0]
    }
    assert records[first.id] == ("approved", reviewer, None)
    assert records[second.id] == ("rejected", reviewer, "not today")
    assert (desk.runs(first.id), desk.runs(second.id)) == (1, 0)
    assert charge["call_id"] != other["call_id"]
    print(f"screenshot: {tmp_path / 'review-pending.png'}")
