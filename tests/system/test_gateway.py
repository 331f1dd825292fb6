"""The HTTP gateway as users run it: `turnq gateway` (uvicorn on loopback) + real workers.

Every route, streaming with resume, cancellation, isolation between users, rate limits,
auth, problem bodies, a conversation driven by curl, and `turnq chat --url`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ops.processes import ROOT
from shared.turn_events import pos_of
from tests.system.test_gateway_support import (
    TURNQ,
    Api,
    GatewayProcess,
    is_terminal,
    new_key,
    sse_events,
    text_of,
)

pytestmark = pytest.mark.system

SLOW = {"TURNQ_AGENT": "tests.agents:slow_echo", "TEST_MODEL_LATENCY_S": "1.0"}


@pytest.fixture(scope="module")
def gateway(stack_env: dict[str, str]) -> Iterator[GatewayProcess]:
    g = GatewayProcess(
        {
            **stack_env,
            "TURNQ_GATEWAY_RATE_PER_S": "1000",
            "TURNQ_GATEWAY_RATE_BURST": "1000",
            "TURNQ_GATEWAY_SSE_HEARTBEAT_S": "0.3",
        }
    )
    g.start()
    yield g
    g.stop()


@pytest.fixture
def alice(gateway: GatewayProcess, database_url: str, uid: str) -> Iterator[Api]:
    api = Api(gateway.url, new_key(database_url, f"alice-{uid}"))
    yield api
    api.close()


@pytest.fixture
def bob(gateway: GatewayProcess, database_url: str, uid: str) -> Iterator[Api]:
    api = Api(gateway.url, new_key(database_url, f"bob-{uid}"))
    yield api
    api.close()


def test_a_conversation_through_every_route(
    gateway: GatewayProcess, alice: Api, start_worker: Any, uid: str
) -> None:
    start_worker("gw-conv")
    health = httpx.get(f"{gateway.url}/healthz", timeout=10)
    assert health.status_code == 200, health.text
    checks = health.json()["checks"]
    assert checks["postgres"]["status"] == checks["redis"]["status"] == "ok"
    assert checks["workers"]["count"] >= 1

    session = f"conv-{uid}"
    r = alice.request("POST", f"/v1/sessions/{session}/turns", json={"content": "first"})
    assert r.status_code == 202, r.text
    first = r.json()
    assert r.headers["location"] == f"/v1/turns/{first['turn_id']}"
    assert (first["session_id"], first["seq"], first["status"], first["created"]) == (
        session,
        1,
        "queued",
        True,
    )
    done = alice.wait(first["turn_id"])
    assert done["status"] == "succeeded" and done["output"] == "echo: first [ctx=1]"
    assert done["usage"]["requests"] == 1 and done["queue_wait_s"] >= 0 and done["run_s"] > 0
    assert done["queued_at"] and done["started_at"] and done["finished_at"]

    # Idempotency: the same key returns the same turn; other content with it is a 409.
    second = alice.send(session, "second", idempotency_key=f"k-{uid}")
    again = alice.send(session, "second", idempotency_key=f"k-{uid}")
    assert again["turn_id"] == second["turn_id"] and again["created"] is False
    conflict = alice.expect(
        409,
        "POST",
        f"/v1/sessions/{session}/turns",
        json={"content": "other", "idempotency_key": f"k-{uid}"},
    )
    assert conflict["code"] == "idempotency_conflict"
    assert conflict["turn_id"] == second["turn_id"]
    third = alice.send(session, "third")
    assert alice.wait(third["turn_id"])["output"] == "echo: third [ctx=5]"
    assert alice.wait(second["turn_id"])["seq"] == 2

    detail = alice.expect(200, "GET", f"/v1/sessions/{session}")
    assert detail["session_id"] == session
    assert (detail["turn_count"], detail["item_count"]) == (3, 6)
    assert detail["context_tokens"] > 0 and detail["transcript_tokens"] > 0
    assert detail["compaction_mark"] == 0 and detail["compaction_count"] == 0
    assert detail["summary"] is None

    # The transcript, paged.
    page1 = alice.expect(200, "GET", f"/v1/sessions/{session}/items?limit=4")
    assert [i["position"] for i in page1["items"]] == [0, 1, 2, 3]
    assert page1["next_after"] == 3
    page2 = alice.expect(200, "GET", f"/v1/sessions/{session}/items?limit=4&after=3")
    assert [i["position"] for i in page2["items"]] == [4, 5] and page2["next_after"] is None
    items = [i["item"] for i in page1["items"] + page2["items"]]
    assert [text_of(i) for i in items if i.get("role") == "user"] == ["first", "second", "third"]

    # Sessions, newest activity first, paged by cursor.
    other = f"conv2-{uid}"
    alice.wait(alice.send(other, "hello")["turn_id"])
    listing = alice.expect(200, "GET", "/v1/sessions?limit=1")
    assert [s["session_id"] for s in listing["sessions"]] == [other]
    assert listing["next_cursor"]
    rest = alice.expect(200, "GET", f"/v1/sessions?limit=1&cursor={listing['next_cursor']}")
    assert [s["session_id"] for s in rest["sessions"]] == [session]
    assert rest["next_cursor"] is None

    # Delete: 204, then the session is gone everywhere.
    r = alice.request("DELETE", f"/v1/sessions/{other}")
    assert r.status_code == 204 and r.content == b""
    assert alice.expect(404, "GET", f"/v1/sessions/{other}")["code"] == "session_not_found"
    assert [s["session_id"] for s in alice.expect(200, "GET", "/v1/sessions")["sessions"]] == [
        session
    ]

    # Metrics: route templates and status codes, never ids.
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert (
        'turnq_http_requests_total{method="POST",route="/v1/sessions/{session_id}/turns",'
        'status="202"}' in metrics
    )
    assert 'route="/v1/turns/{turn_id}"' in metrics
    assert session not in metrics and first["turn_id"] not in metrics and uid not in metrics

    schema = httpx.get(f"{gateway.url}/openapi.json", timeout=10).json()
    assert "/v1/turns/{turn_id}/events" in schema["paths"]


def test_events_stream_live_and_resume_after_last_event_id(
    gateway: GatewayProcess, alice: Api, start_worker: Any, uid: str
) -> None:
    start_worker("gw-sse", **SLOW)
    turn = alice.send(f"sse-{uid}", "stream me please")
    url = f"/v1/turns/{turn['turn_id']}/events"
    # Read until the turn is running, then hang up mid-turn.
    with alice.http.stream("GET", url) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        seen = []
        for event in sse_events(r.iter_lines()):
            seen.append(event)
            if event["data"].get("status") == "running":
                break
    assert seen[-1]["event"] == "status" and seen[-1]["data"]["turn_id"] == turn["turn_id"]
    last_id = seen[-1]["id"]

    raw: list[str] = []

    def recording(lines: Iterator[str]) -> Iterator[str]:
        for line in lines:
            raw.append(line)
            yield line

    with alice.http.stream("GET", url, headers={"Last-Event-ID": last_id}) as r:
        assert r.status_code == 200
        rest = list(sse_events(recording(r.iter_lines())))
    ids = [e["id"] for e in rest]
    assert ids and all(_stream_id(i) > _stream_id(last_id) for i in ids), (last_id, ids)
    assert len(set(ids)) == len(ids)
    assert is_terminal(rest[-1]) and rest[-1]["data"]["status"] == "succeeded"
    assert not any(is_terminal(e) for e in rest[:-1])
    assert any(line.startswith(":") for line in raw), "no heartbeat while the model ran"
    deltas = "".join(e["data"]["text"] for e in rest if e["event"] == "delta")
    done = alice.wait(turn["turn_id"])
    assert deltas.strip() == done["output"]

    # A finished turn replays from the start and ends; the query form works too.
    with alice.http.stream("GET", url) as r:
        replay = list(sse_events(r.iter_lines()))
    assert [e["id"] for e in replay][-len(rest) :] == ids
    with alice.http.stream("GET", f"{url}?after={ids[-2]}") as r:
        assert [e["id"] for e in sse_events(r.iter_lines())] == ids[-1:]
    bad = alice.expect(422, "GET", url, headers={"Last-Event-ID": "yesterday"})
    assert bad["errors"][0]["field"] == "Last-Event-ID"


def _stream_id(event_id: str) -> tuple[int, int, int]:
    return pos_of(event_id.removesuffix("-final"))


def test_cancel_queued_and_running_turns(
    gateway: GatewayProcess, alice: Api, start_worker: Any, uid: str
) -> None:
    # No worker yet: the turn stays queued and is cancelled at once (200).
    queued = alice.send(f"cq-{uid}", "never runs")
    r = alice.request("POST", f"/v1/turns/{queued['turn_id']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["terminal"] is True
    assert alice.expect(200, "POST", f"/v1/turns/{queued['turn_id']}/cancel")["status"] == (
        "cancelled"
    )

    start_worker("gw-cancel", **{**SLOW, "TEST_MODEL_LATENCY_S": "3"})
    running = alice.send(f"cr-{uid}", "stop me")
    alice.wait_status(running["turn_id"], "running")
    r = alice.request("POST", f"/v1/turns/{running['turn_id']}/cancel", json={"mode": "rollback"})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "running"
    ended = alice.wait(running["turn_id"])
    assert ended["status"] == "cancelled", ended
    assert alice.items(f"cr-{uid}") == [], "a rolled-back turn left items behind"

    done = alice.send(f"cd-{uid}", "finish me")
    assert alice.wait(done["turn_id"])["status"] == "succeeded"
    problem = alice.expect(409, "POST", f"/v1/turns/{done['turn_id']}/cancel")
    assert problem["code"] == "turn_not_cancellable" and problem["turn_status"] == "succeeded"
    bad = alice.expect(422, "POST", f"/v1/turns/{done['turn_id']}/cancel", json={"mode": "x"})
    assert bad["errors"][0]["field"] == "mode"


def test_another_users_sessions_and_turns_do_not_exist_for_them(
    alice: Api, bob: Api, start_worker: Any, uid: str
) -> None:
    start_worker("gw-iso")
    session = f"private-{uid}"
    turn = alice.send(session, "my secret")
    assert alice.wait(turn["turn_id"])["status"] == "succeeded"
    tid, ghost_tid = turn["turn_id"], str(uuid.uuid4())
    ghost = f"ghost-{uid}"

    def probe(api: Api, method: str, path: str, **kw: Any) -> tuple[int, bytes, str]:
        r = api.request(method, path, **kw)
        return r.status_code, r.content, r.headers.get("content-type", "")

    routes = [
        ("GET", "/v1/turns/{t}"),
        ("GET", "/v1/turns/{t}?wait=0.5"),
        ("GET", "/v1/turns/{t}/events"),
        ("POST", "/v1/turns/{t}/cancel"),
        ("GET", "/v1/sessions/{s}"),
        ("GET", "/v1/sessions/{s}/items"),
        ("DELETE", "/v1/sessions/{s}"),
    ]
    for method, template in routes:
        foreign = probe(bob, method, template.format(t=tid, s=session))
        missing = probe(bob, method, template.format(t=ghost_tid, s=ghost))
        assert foreign[0] == 404, (method, template, foreign)
        assert foreign == missing, (method, template, foreign, missing)
        assert foreign[2] == "application/problem+json"
    assert session.encode() not in probe(bob, "GET", f"/v1/sessions/{session}")[1]
    assert bob.expect(200, "GET", "/v1/sessions")["sessions"] == []

    # Bob writing to "the same" session id writes to his own session.
    bobs = bob.send(session, "bob was here")
    assert bobs["seq"] == 1
    assert bob.wait(bobs["turn_id"])["output"] == "echo: bob was here [ctx=1]"
    assert [text_of(i) for i in alice.items(session) if i.get("role") == "user"] == ["my secret"]
    assert alice.expect(200, "GET", f"/v1/turns/{tid}")["status"] == "succeeded"
    assert alice.expect(200, "GET", f"/v1/sessions/{session}")["turn_count"] == 1


def test_rate_limit_answers_429_with_retry_after(
    stack_env: dict[str, str], database_url: str, uid: str
) -> None:
    g = GatewayProcess(
        {**stack_env, "TURNQ_GATEWAY_RATE_PER_S": "1", "TURNQ_GATEWAY_RATE_BURST": "3"},
        name="gateway-limited",
    )
    g.start()
    limited = Api(g.url, new_key(database_url, f"busy-{uid}"))
    calm = Api(g.url, new_key(database_url, f"calm-{uid}"))
    try:
        codes = [limited.request("GET", "/v1/sessions").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429], codes
        r = limited.request("GET", "/v1/sessions")
        assert r.status_code == 429
        assert r.headers["content-type"] == "application/problem+json"
        retry_after = int(r.headers["retry-after"])
        assert 1 <= retry_after <= 2
        assert r.json()["code"] == "rate_limited"
        assert calm.request("GET", "/v1/sessions").status_code == 200, "limits are per user"
        time.sleep(retry_after)
        assert limited.request("GET", "/v1/sessions").status_code == 200
        metrics = httpx.get(f"{g.url}/metrics", timeout=10).text
        assert "turnq_gateway_rate_limited_total 2.0" in metrics
    finally:
        limited.close()
        calm.close()
        g.stop()


def test_auth_by_bearer_or_x_api_key_and_revocation(
    gateway: GatewayProcess, stack_env: dict[str, str], uid: str
) -> None:
    env = {**os.environ, **stack_env, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [*TURNQ, "keys", "create", "--user", f"carol-{uid}", "--name", "ci"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("tq_") and len(key.split("_", 2)[2]) >= 40

    url = f"{gateway.url}/v1/sessions"
    assert httpx.get(url, headers={"X-API-Key": key}).status_code == 200
    assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    for headers in ({}, {"Authorization": "Bearer tq_nope"}, {"X-API-Key": key + "x"}):
        r = httpx.get(url, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["code"] == "unauthorized"
    # Unauthenticated requests learn nothing else first, not even that their JSON is bad.
    r = httpx.post(f"{gateway.url}/v1/sessions/x/turns", content=b"{", headers={
        "content-type": "application/json"})  # fmt: skip
    assert r.status_code == 401

    prefix = key.split("_")[1]
    out = subprocess.run(
        [*TURNQ, "keys", "revoke", prefix],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert httpx.get(url, headers={"X-API-Key": key}).status_code == 401


def test_every_client_error_is_a_clear_problem(alice: Api, uid: str) -> None:
    path = f"/v1/sessions/err-{uid}/turns"
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"content": b"{not json", "ct": "application/json"}, 400, "malformed_json"),
        ({"json": {}}, 422, "invalid_input"),
        ({"json": {"content": 5}}, 422, "invalid_input"),
        ({"json": {"content": "   "}}, 422, "invalid_input"),
        ({"json": {"content": "a\u0000b"}}, 422, "invalid_input"),
        ({"json": {"content": "x", "multitask_strategy": "shout"}}, 422, "invalid_input"),
        ({"json": {"content": "x", "idempotency_key": "has space"}}, 422, "invalid_input"),
        ({"json": {"content": "x", "surprise": 1}}, 422, "invalid_input"),
        ({"json": {"content": "é" * 20_000}}, 413, "content_too_large"),
        # Over the default body limit (text, 8 MiB of attachments, metadata: app.py).
        ({"content": b"{}" + b" " * 9_000_000, "ct": "application/json"}, 413, "body_too_large"),
        ({"content": b"content=hi", "ct": "text/plain"}, 415, "unsupported_media_type"),
        (
            {"content": b"[" * 60_000 + b"]" * 60_000, "ct": "application/json"},
            400,
            "malformed_json",
        ),
    ]
    for kw, status, code in cases:
        if "ct" in kw:
            kw = {"content": kw["content"], "headers": {"content-type": kw["ct"]}}
        r = alice.request("POST", path, **kw)
        assert r.status_code == status, (kw.keys(), r.status_code, r.text[:300])
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["code"] == code and problem["status"] == status, problem
        assert problem["title"] and problem["detail"] and problem["type"].endswith(code)
        if status == 422:
            assert problem["errors"] and problem["errors"][0]["field"], problem
    missing = alice.expect(422, "POST", path, json={})
    assert missing["errors"][0]["field"] == "content"
    assert alice.expect(422, "GET", "/v1/turns/not-a-uuid")["errors"][0]["field"] == "turn_id"
    assert alice.expect(422, "GET", "/v1/sessions/bad%20id")["errors"][0]["field"] == ("session_id")
    assert alice.expect(422, "GET", "/v1/sessions?limit=0")["errors"][0]["field"] == "limit"
    forged = alice.expect(422, "GET", "/v1/sessions?cursor=WyJ4IiwgInkiXQ")
    assert forged["errors"][0]["field"] == "cursor"
    assert alice.expect(422, "GET", f"/v1/turns/{uuid.uuid4()}?wait=61")["errors"]
    assert alice.expect(404, "GET", "/v1/nothing-here")["code"] == "no_such_route"
    r = alice.request("PUT", "/v1/sessions")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert alice.expect(200, "GET", "/v1/sessions")["sessions"] == [], "nothing was written"


def test_a_conversation_with_curl(
    gateway: GatewayProcess, database_url: str, start_worker: Any, uid: str
) -> None:
    """What the README shows, run by curl: any language can do this."""
    assert shutil.which("curl"), "curl is needed"
    start_worker("gw-curl")
    key = new_key(database_url, f"curl-{uid}")
    base, session = gateway.url, f"curl-{uid}"

    def curl(*args: str) -> str:
        out = subprocess.run(
            ["curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {key}", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    json_body = ["-H", "Content-Type: application/json", "-d"]
    turns_url = f"{base}/v1/sessions/{session}/turns"
    accepted = json.loads(
        curl("-X", "POST", turns_url, *json_body, '{"content": "What is the weather in Austin?"}')
    )
    turn_id = accepted["turn_id"]
    done = json.loads(curl(f"{base}/v1/turns/{turn_id}?wait=30"))
    assert done["status"] == "succeeded"
    assert done["output"] == "echo: What is the weather in Austin? [ctx=1]"
    items = json.loads(curl(f"{base}/v1/sessions/{session}/items"))["items"]
    assert [i["item"].get("role") for i in items] == ["user", "assistant"]

    second = json.loads(curl("-X", "POST", turns_url, *json_body, '{"content": "And Seattle?"}'))
    stream = curl("-N", "--max-time", "30", f"{base}/v1/turns/{second['turn_id']}/events")
    events = list(sse_events(iter(stream.splitlines())))
    assert events and is_terminal(events[-1]), stream
    assert events[-1]["data"]["status"] == "succeeded"


def test_turnq_chat_through_the_gateway(
    gateway: GatewayProcess, database_url: str, start_worker: Any, uid: str
) -> None:
    start_worker("gw-chat")
    key = new_key(database_url, f"chat-{uid}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNQ_")}
    env["PYTHONPATH"] = str(ROOT)  # no database or Redis: only the URL and the key
    chat = subprocess.run(
        [*TURNQ, "chat", f"chat-{uid}", "--url", gateway.url, "--key", key],
        input="hello gateway\nsecond message\n/history\n/quit\n",
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert chat.returncode == 0, chat.stdout + chat.stderr
    assert "agent> echo: hello gateway [ctx=1]" in chat.stdout, chat.stdout
    assert "agent> echo: second message [ctx=3]" in chat.stdout, chat.stdout
    assert "user: second message" in chat.stdout  # /history over HTTP

    bad = subprocess.run(
        [*TURNQ, "chat", f"chat-{uid}", "--url", gateway.url, "--key", "tq_wrong"],
        input="hi\n/quit\n", env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "API key" in bad.stdout + bad.stderr and "Traceback" not in bad.stderr


def test_healthz_is_503_json_when_redis_is_down(
    stack_env: dict[str, str], database_url: str, uid: str
) -> None:
    g = GatewayProcess({**stack_env, "TURNQ_REDIS_URL": "redis://127.0.0.1:1/0"}, "gw-noredis")
    g.start()
    try:
        r = httpx.get(f"{g.url}/healthz", timeout=20)
        assert r.status_code == 503 and r.headers["content-type"] == "application/json"
        checks = r.json()["checks"]
        assert checks["postgres"]["status"] == "ok" and checks["redis"]["status"] == "down"
        # Postgres is the truth: a turn is still accepted (the reaper kicks it later).
        api = Api(g.url, new_key(database_url, f"nr-{uid}"))
        try:
            assert api.send(f"nr-{uid}", "still accepted")["status"] == "queued"
        finally:
            api.close()
    finally:
        g.stop()
