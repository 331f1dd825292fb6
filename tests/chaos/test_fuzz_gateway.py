"""Hostile requests against the real gateway (`turnq gateway` on loopback) with a real worker.

Schemathesis (tests/system/test_gateway_fuzz.py) already covers what the schema
describes; this file sends what no schema describes: hostile values in JSON bodies,
path segments (traversal, ``%00``, invalid UTF-8, encoded surrogates, very long ids),
query parameters and headers, malformed and 10,000-deep JSON, wrong content types and
bodies of many megabytes, written byte by byte on a raw socket where httpx would refuse.

Every answer must be below 500; every 4xx must be ``application/problem+json`` with a
code and a clear detail; an accepted turn must run and read back byte-identical.
Afterwards the gateway and the worker are alive and a user's existing session is
unchanged and still takes turns.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import psycopg
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.support.adversarial import (
    ALL,
    fuzz_settings,
    hostile_content,
    hostile_id,
    json_value,
    stored_parts,
    turn_inputs,
)
from tests.support.chaos_stack import gateway_and_worker
from tests.support.workers import WorkerProcess
from tests.system.test_gateway_support import Api, GatewayProcess, new_key

pytestmark = [pytest.mark.chaos, pytest.mark.system]

EXAMPLES = 300
PROBLEM = "application/problem+json"
UNPARSEABLE = b"Invalid HTTP request received."


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def unparseable(self) -> bool:
        return self.body == UNPARSEABLE


@dataclass
class Target:
    gateway: GatewayProcess
    worker: WorkerProcess
    api: Api
    key: str
    session: str
    turn_ids: list[str]
    transcript: bytes
    sent: int = 0
    unparseable: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def hostport(self) -> tuple[str, int]:
        parts = urlsplit(self.gateway.url)
        assert parts.hostname and parts.port
        return parts.hostname, parts.port

    def record(self, status: int) -> None:
        self.sent += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1


def check_answer(target: Target, answer: Answer, what: str) -> Answer:
    """Never a 5xx; a 4xx is a problem+json with a code and a detail."""
    target.record(answer.status)
    what = what[:200]
    assert answer.status < 500, f"{what}: {answer.status} {answer.body[:300]!r}"
    if answer.unparseable:
        # uvicorn's HTTP parser refused the request line or a header before the app ran
        # (raw non-ASCII bytes, NUL or control characters): its fixed plain-text 400.
        assert answer.status == 400, (what[:200], answer.status)
        target.unparseable += 1
        return answer
    if answer.status >= 400:
        assert answer.headers.get("content-type") == PROBLEM, (what, answer.headers)
        problem = answer.json()
        assert problem["status"] == answer.status, (what, problem)
        assert problem["code"] and problem["title"], (what, problem)
        assert isinstance(problem["detail"], str) and len(problem["detail"]) > 10, (what, problem)
        assert len(answer.body) < 20_000, f"{what}: the problem echoes the input"
    return answer


def send_raw(target: Target, request: bytes, what: str) -> Answer:
    """One request written as bytes (no client-side validation), Connection: close."""
    with socket.create_connection(target.hostport, timeout=30) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (413) and close before reading it all
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), f"{what}: no HTTP answer: {raw[:200]!r}"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return check_answer(target, Answer(int(lines[0].split()[1]), headers, body), what)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + rest[:size], rest[size + 2 :]
    return out


def request_bytes(
    target: Target,
    method: str,
    target_path: bytes,
    *,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    auth: bool = True,
    content_type: bytes | None = b"application/json",
) -> bytes:
    host, port = target.hostport
    lines = [method.encode() + b" " + target_path + b" HTTP/1.1", f"Host: {host}:{port}".encode()]
    if auth:
        lines.append(b"Authorization: Bearer " + target.key.encode())
    if content_type is not None and body:
        lines.append(b"Content-Type: " + content_type)
    if body:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines += [name + b": " + value for name, value in headers or []]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def call(target: Target, method: str, path: bytes, what: str = "", **kw: Any) -> Answer:
    return send_raw(
        target, request_bytes(target, method, path, **kw), what or path.decode("latin-1")
    )


def path_of(value: str) -> bytes:
    """A path segment for any string: its UTF-8 bytes (surrogates kept) percent-encoded."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="").encode()


def transcript(api: Api, session: str) -> bytes:
    r = api.request("GET", f"/v1/sessions/{session}/items?limit=1000")
    assert r.status_code == 200, r.text
    return r.content


@pytest.fixture(scope="module")
def target(stack_env: dict[str, str], database_url: str) -> Iterator[Target]:
    gateway, worker = gateway_and_worker(stack_env, "fuzz-gw")
    uid = secrets.token_hex(4)
    key = new_key(database_url, f"victim-{uid}")
    api = Api(gateway.url, key)
    session = f"existing-{uid}"
    turn_ids = []
    for message in ("first message", "second message"):
        turn = api.send(session, message)
        assert api.wait(turn["turn_id"])["status"] == "succeeded"
        turn_ids.append(turn["turn_id"])
    t = Target(gateway, worker, api, key, session, turn_ids, transcript(api, session))
    try:
        yield t
        # After everything: both processes up, the existing session untouched and usable.
        assert gateway.alive() and worker.alive()
        assert httpx.get(f"{gateway.url}/healthz", timeout=10).status_code == 200
        assert transcript(api, session) == t.transcript, "the fuzzing changed a session"
        nxt = api.send(session, "third message")
        done = api.wait(nxt["turn_id"])
        assert done["status"] == "succeeded" and done["output"] == "echo: third message [ctx=5]"
        metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
        served = [
            line for line in metrics.splitlines() if line.startswith("turnq_http_requests_total{")
        ]
        assert served and not [line for line in served if 'status="5' in line], served
        for proc in (gateway, worker):
            assert "Traceback" not in proc.log_text(), proc.log_text()[-3000:]
        print(
            f"gateway fuzz: {t.sent} hostile requests, statuses {sorted(t.statuses.items())}, "
            f"{t.unparseable} refused by uvicorn's parser"
        )
    finally:
        api.close()
        worker.stop()
        gateway.stop()


# ====================================================================== JSON bodies
def _accepted_round_trips(target: Target, answer: Answer, session: str, content: str) -> None:
    accepted = answer.json()
    assert accepted["session_id"] == session
    done = target.api.wait(accepted["turn_id"])
    assert done["status"] == "succeeded", done
    assert done["input"] == content and done["output"].startswith(f"echo: {content}")
    r = target.api.request("GET", f"/v1/sessions/{quote(session, safe='')}/items?limit=1000")
    items = r.json()["items"]
    assert content in [i["item"]["content"] for i in items if i["item"].get("role") == "user"]


def test_hostile_json_bodies_and_session_ids(target: Target, uid: str) -> None:
    outcomes: dict[str, int] = {}

    @fuzz_settings(EXAMPLES)
    @given(
        hostile=st.sampled_from(["content", "content", "session", "idem", "strategy", "extra"]),
        value=hostile_id(),
        content=hostile_content(),
        escape=st.booleans(),
    )
    def one(hostile: str, value: str, content: str, escape: bool) -> None:
        session = value if hostile == "session" else f"fuzz-{uid}"
        body: dict[str, Any] = {"content": content}
        if hostile == "idem":
            body["idempotency_key"] = value
        if hostile == "strategy":
            body["multitask_strategy"] = value
        if hostile == "extra":
            body[value] = value
        # ASCII-escaped JSON carries a lone surrogate as "\ud800"; raw UTF-8 cannot hold
        # one, so "surrogatepass" makes the body invalid UTF-8: both must be refused.
        encoded = json.dumps(body, ensure_ascii=escape).encode("utf-8", "surrogatepass")
        answer = call(target, "POST", b"/v1/sessions/" + path_of(session) + b"/turns", body=encoded)
        outcome = str(answer.status)
        if answer.status >= 400:
            outcome += " unparseable" if answer.unparseable else " " + answer.json()["code"]
        event(outcome)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if answer.status == 202:
            _accepted_round_trips(target, answer, session, content)
        else:
            assert 400 <= answer.status < 500, answer

    one()
    print(f"gateway JSON fuzz: {EXAMPLES} cases, outcomes {sorted(outcomes.items())}")
    assert outcomes.get("202", 0) >= 10, outcomes
    assert sum(v for k, v in outcomes.items() if k.startswith("4")) >= 10, outcomes


def test_hostile_agents_metadata_and_content_parts(
    target: Target, database_url: str, uid: str
) -> None:
    """Every answer below 500; a refusal writes nothing; an accepted turn runs and reads
    back as sent (parts without their null fields, metadata by JSON value)."""
    outcomes: dict[str, int] = {}
    accepted: list[tuple[str, str, Any]] = []

    @fuzz_settings(EXAMPLES)
    @given(inputs=turn_inputs("echo"), escape=st.booleans())
    def one(inputs: tuple[str | None, Any, Any], escape: bool) -> None:
        agent, metadata, content = inputs
        body = {"content": content, "agent": agent, "metadata": metadata}
        try:
            encoded = json.dumps(body, ensure_ascii=escape, allow_nan=True)
        except ValueError:  # a number JSON cannot write
            return
        before = rows(database_url)
        session = f"parts-{uid}"
        answer = call(
            target, "POST", f"/v1/sessions/{session}/turns".encode(),
            body=encoded.encode("utf-8", "surrogatepass"),
        )  # fmt: skip
        outcome = str(answer.status)
        if answer.status == 202:
            accepted.append((answer.json()["turn_id"], session, body))
        else:
            assert 400 <= answer.status < 500, answer
            assert rows(database_url) == before, f"a {answer.status} wrote rows"
            if not answer.unparseable:
                problem = answer.json()
                fields = [
                    re.sub(r"\[\d+\]", "[i]", e["field"]) for e in problem.get("errors") or []
                ]
                outcome += f" {problem['code']} {','.join(fields)}"
        event(outcome)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    one()
    sent = []
    for turn_id, _session, body in accepted:
        done = target.api.wait(turn_id)
        assert done["status"] == "succeeded", done
        parts = stored_parts(body["content"])
        assert done["content"] == parts
        assert json_value(done["metadata"]) == json_value(body["metadata"])
        sent.append(parts)
    r = target.api.request("GET", f"/v1/sessions/parts-{uid}/items?limit=1000")
    items = [i["item"] for i in r.json()["items"]] if sent else []
    assert [i["content"] for i in items if i.get("role") == "user"] == sent
    print(f"gateway agents/metadata/parts fuzz: {EXAMPLES} cases, {sorted(outcomes.items())}")
    assert outcomes.get("202", 0) >= 30, outcomes
    assert sum(v for k, v in outcomes.items() if k.startswith("4")) >= 30, outcomes


def rows(database_url: str) -> tuple[int, int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM turns)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


# ====================================================================== paths, queries
def test_hostile_paths_and_queries(target: Target) -> None:
    tid, sid = target.turn_ids[0], target.session
    segments = [
        b"..%2f..%2fetc%2fpasswd",
        b"%2e%2e",
        b"%00",
        b"a%00b",
        b"%ff%fe",
        b"%ed%a0%80",  # a UTF-16 surrogate encoded as UTF-8 (invalid UTF-8)
        b"%c0%ae%c0%ae",  # overlong "..": invalid UTF-8
        b"\xff\xfe",  # raw bytes on the wire
        b"a" * 129,
        b"a" * 8_000,
        tid.encode() + b"%00",
        tid.encode() + b"/../" + tid.encode(),
        *(path_of(v) for v in ALL),
    ]
    routes = [
        ("GET", b"/v1/turns/%s"),
        ("GET", b"/v1/turns/%s/events"),
        ("POST", b"/v1/turns/%s/cancel"),
        ("GET", b"/v1/sessions/%s"),
        ("GET", b"/v1/sessions/%s/items"),
        ("DELETE", b"/v1/sessions/%s"),
        ("POST", b"/v1/sessions/%s/turns"),
        ("POST", b"/v1/turns/%s/approvals"),
    ]
    for method, template in routes:
        for segment in segments:
            body = (
                b'{"content": "hello"}'
                if template.endswith(b"turns")
                else APPROVE
                if template.endswith(b"approvals")
                else b""
            )
            answer = call(target, method, template % segment, body=body)
            assert answer.status in (404, 405, 413, 414, 422) or answer.unparseable, (
                template % segment,
                answer,
            )
    # Traversal that resolves to a real route is still only that route, with its own checks.
    for path in (b"/v1/sessions/../turns/" + tid.encode(), b"/v1/../v1/turns/" + tid.encode()):
        call(target, "GET", path)
    queries = [
        b"limit=1e999", b"limit=NaN", b"limit=-0", b"limit=99999999999999999999999",
        b"limit=1&limit=2000", b"after=-2", b"after=99999999999999999999999",
        b"after=%00", b"limit=%ff", b"wait=nan", b"wait=inf", b"wait=-1e-320", b"wait=1e999",
        b"cursor=" + b"W" * 600, b"cursor=%00", b"cursor=' OR 1=1--", b"after=1' OR '1'='1",
        b"a" * 10_000 + b"=1",
    ] + [b"cursor=" + path_of(v) for v in ALL] + [b"after=" + path_of(v) for v in ALL]  # fmt: skip
    for query in queries:
        for path in (
            b"/v1/sessions",
            b"/v1/approvals",
            b"/v1/sessions/" + sid.encode() + b"/items",
            b"/v1/turns/" + tid.encode(),
            b"/v1/turns/" + tid.encode() + b"/events",
        ):
            call(target, "GET", path + b"?" + query)
    for query in (b"status=%00", b"status=all&status=pending", b"status=" + b"x" * 5000,
                  b"status=PENDING", b"limit=0", b"limit=201", b"cursor="):  # fmt: skip
        call(target, "GET", b"/v1/approvals?" + query)
    print(f"paths and queries: {len(routes) * len(segments) + len(queries) * 5} requests")


# ====================================================================== approvals
APPROVE = b'{"decisions": [{"call_id": "call_1", "approve": true}]}'


def test_hostile_approval_decisions(target: Target, uid: str) -> None:
    """Decisions with hostile call ids, messages and values, on a real turn of the victim's
    (which asked about nothing: 404 approval_not_found) and on unknown ones (404)."""
    outcomes: dict[str, int] = {}
    turn = target.turn_ids[0]

    @fuzz_settings(EXAMPLES)
    @given(
        call_id=hostile_id(),
        message=st.one_of(st.none(), hostile_content()),
        approve=st.one_of(st.booleans(), st.sampled_from([0, 1, "yes", None, [], {}, 1e999])),
        extra=st.one_of(st.none(), hostile_id()),
        repeat=st.integers(1, 3),
        escape=st.booleans(),
    )
    def one(
        call_id: str, message: str | None, approve: Any, extra: str | None, repeat: int,
        escape: bool,
    ) -> None:  # fmt: skip
        decision: dict[str, Any] = {"call_id": call_id, "approve": approve, "message": message}
        if extra is not None:
            decision[extra] = extra
        body = {"decisions": [decision] * repeat}
        encoded = json.dumps(body, ensure_ascii=escape).encode("utf-8", "surrogatepass")
        answer = call(target, "POST", f"/v1/turns/{turn}/approvals".encode(), body=encoded)
        outcome = str(answer.status)
        if answer.status >= 400:
            outcome += " unparseable" if answer.unparseable else " " + answer.json()["code"]
        event(outcome)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        assert answer.status in (400, 404, 413, 422), answer
        if answer.status == 404:
            assert answer.json()["code"] == "approval_not_found"

    one()
    print(f"approval fuzz: {EXAMPLES} cases, outcomes {sorted(outcomes.items())}")
    assert outcomes.get("404 approval_not_found", 0) >= 10, outcomes
    for tid in (uuid.uuid4(), uuid.UUID(int=0)):
        answer = call(target, "POST", f"/v1/turns/{tid}/approvals".encode(), body=APPROVE)
        assert (answer.status, answer.json()["code"]) == (404, "turn_not_found")
    many = b",".join([b'{"call_id": "c", "approve": true}'] * 65)
    for body in (b"{}", b'{"decisions": []}', b'{"decisions": {}}', b'{"decisions": [1]}',
                 b'{"decisions": ' + _nested(10_000) + b"}",
                 b'{"decisions": [' + many + b"]}"):  # fmt: skip
        answer = call(target, "POST", f"/v1/turns/{turn}/approvals".encode(), body=body)
        assert answer.status in (400, 422), (body[:60], answer)


def _cursor(*parts: Any) -> bytes:
    raw = json.dumps(list(parts)).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def test_forged_approval_cursors(target: Target) -> None:
    """Cursors this API never issued, built to reach the SQL: a 422, never a 500."""
    tid = str(uuid.uuid4())
    stamp = "2026-01-01T00:00:00+00:00"
    forged = [
        _cursor(stamp, tid, "call\x00id"),
        _cursor(stamp, tid, "\ud800"),
        _cursor(stamp, tid, "c" * 600),
        _cursor(stamp, tid, ["c"]),
        _cursor(stamp, "not-a-uuid", "c"),
        _cursor(stamp, tid),
        _cursor("2026-01-01T00:00:00", tid, "c"),  # no time zone
        _cursor("0001-01-01T00:00:00+14:00", tid, "c"),
        _cursor("9999-12-31T23:59:59.999999-14:00", tid, "c"),
        _cursor(["2026"], tid, "c"),
        _cursor(1, 2, 3, 4),
        base64.urlsafe_b64encode(b"\xff\xfe not json"),
    ]
    statuses = []
    for cursor in forged:
        answer = call(target, "GET", b"/v1/approvals?status=all&cursor=" + cursor)
        statuses.append(answer.status)
        assert answer.status in (200, 422), (base64.urlsafe_b64decode(cursor + b"=="), answer)
    print(f"forged approval cursors: {statuses}")


# ====================================================================== headers
def test_hostile_headers(target: Target) -> None:
    tid = target.turn_ids[0].encode()
    events = b"/v1/turns/" + tid + b"/events"
    for value in [*ALL, "99999999999999999999-0", "0-0-final-final", "1" * 10_000]:
        raw = value.encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b"")
        answer = call(target, "GET", events, headers=[(b"Last-Event-ID", raw)])
        assert answer.status == 422 or answer.unparseable, (value, answer)
    keys = [
        b"", b"tq_", b"tq_x_y", b"' OR '1'='1", b"tq_" + b"a" * 10_000, b"\x00", b"\xff\xfe",
        target.key.encode() + b"\x00", target.key.encode()[:-1], b"%s%s%s",
    ]  # fmt: skip
    for key in keys:
        for header in (b"Authorization", b"X-API-Key"):
            sent = b"Bearer " + key if header == b"Authorization" else key
            for path in (b"/v1/sessions", b"/v1/turns/" + tid):
                answer = call(target, "GET", path, auth=False, headers=[(header, sent)])
                if not answer.unparseable:
                    assert answer.status == 401, (header, key[:40], answer)
                    assert answer.headers["www-authenticate"].startswith("Bearer")
    for scheme in (b"Basic dXNlcjpwYXNz", b"Bearer", b"bearer  ", b"Digest x"):
        assert (
            call(
                target, "GET", b"/v1/sessions", auth=False, headers=[(b"Authorization", scheme)]
            ).status
            == 401
        )
    # Huge and many headers: refused by the server before the app, or served; never a 5xx.
    for headers in (
        [(b"X-Junk", b"x" * 60_000)],
        [(b"X-Junk-%d" % i, b"y" * 100) for i in range(500)],
        [(b"Accept", b"application/xml")],
        [(b"Accept-Encoding", b"gzip;q=" + b"9" * 1000)],
    ):
        answer = send_raw(
            target, request_bytes(target, "GET", b"/v1/sessions", headers=headers), "headers"
        )
        assert answer.status in (200, 400, 413, 431), answer


# ====================================================================== bodies
def _nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b'{"a":' * depth + leaf + b"}" * depth


def test_malformed_deep_huge_and_mistyped_bodies(target: Target, uid: str) -> None:
    turns = f"/v1/sessions/body-{uid}/turns".encode()
    cancel = f"/v1/turns/{target.turn_ids[0]}/cancel".encode()
    deep = 10_000
    bodies: list[tuple[bytes, bytes | None, tuple[int, ...]]] = [
        (b"{", b"application/json", (400,)),
        (b'{"content": "x",}', b"application/json", (400,)),
        (b'{"content": "x"} trailing', b"application/json", (400,)),
        (b"\xef\xbb\xbf{\"content\": \"bom\"}", b"application/json", (400, 202)),
        (b'{"content": "\xff\xfe"}', b"application/json", (400, 422)),
        (b'{"content": "\\ud800"}', b"application/json", (422,)),
        (b'{"content": "\\u0000"}', b"application/json", (422,)),
        (b'{"content": NaN}', b"application/json", (400, 422)),
        (b'{"content": 1e999}', b"application/json", (400, 422)),
        (b'{"content": "a", "content": "b"}', b"application/json", (202, 422)),
        (b"null", b"application/json", (422,)),
        (b"[]", b"application/json", (422,)),
        (b'"content"', b"application/json", (422,)),
        (b'{"content": ' + _nested(deep) + b"}", b"application/json", (400, 422)),
        (b'{"content": "x", "extra": ' + _nested(deep) + b"}", b"application/json", (400, 422)),
        (b"[" * deep + b"]" * deep, b"application/json", (400, 422)),
        (_nested(100_000), b"application/json", (400, 413, 422)),
        (b'{"content": "' + b"a" * 20 * 1024 * 1024 + b'"}', b"application/json", (413,)),
        (b"content=hi", b"application/x-www-form-urlencoded", (415, 422)),
        (b"--b\r\nContent-Disposition: form-data; name=content\r\n\r\nhi\r\n--b--\r\n",
         b"multipart/form-data; boundary=b", (415, 422)),
        (b"<content>hi</content>", b"application/xml", (415,)),
        (b'{"content": "hi"}', b"text/plain", (415,)),
        ('{"content": "hi"}'.encode("utf-16"), b"application/json; charset=utf-16",
         (202, 400, 415)),
        (b'{"content": "hi"}', b"application/json; charset=latin-1", (202, 415)),
        (b'{"content": "hi"}', None, (202, 415)),
        (b'{"content": "hi"}', b"\x00\xff", (415,)),
    ]  # fmt: skip
    for body, content_type, expected in bodies:
        what = f"{content_type!r} {body[:40]!r}... ({len(body)} bytes)"
        answer = call(target, "POST", turns, what, body=body, content_type=content_type)
        assert answer.status in expected or answer.unparseable, (what, answer.status, answer.body)
        if answer.status == 202:  # whatever was accepted runs and is readable
            assert target.api.wait(answer.json()["turn_id"])["status"] == "succeeded"
    for body in (_nested(deep), b'{"mode": ' + _nested(deep) + b"}", b'{"mode": "\\ud800"}'):
        answer = call(target, "POST", cancel, body=body)
        assert answer.status in (400, 422), answer
    # A declared length that is a lie, and a chunked body far over the limit.
    lie = request_bytes(target, "POST", turns, body=b'{"content": "hi"}')
    lie = lie.replace(b"Content-Length: 17", b"Content-Length: 99999999999")
    answer = send_raw(target, lie, "a lying Content-Length")
    assert answer.status == 413, answer
    chunk = b"a" * 1024 * 1024
    chunked = request_bytes(
        target, "POST", turns, headers=[(b"Transfer-Encoding", b"chunked"),
                                        (b"Content-Type", b"application/json")],
    )  # fmt: skip
    for part in [b'{"content": "', *[chunk] * 9, b'"}']:  # over the 8.5 MB default limit
        chunked += b"%x\r\n" % len(part) + part + b"\r\n"
    chunked += b"0\r\n\r\n"
    answer = send_raw(target, chunked, "9 MB chunked body")
    assert answer.status == 413, answer
    # The session these bodies went to is fine.
    assert target.api.wait(target.api.send(f"body-{uid}", "after all that")["turn_id"])[
        "status"
    ] == ("succeeded")
    print(f"bodies: {len(bodies) + 5} malformed/huge/mistyped requests; all answered below 500")


def test_unknown_turn_ids_of_every_shape(target: Target) -> None:
    for tid in (uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.uuid4()):
        for method, suffix in (("GET", ""), ("GET", "/events"), ("POST", "/cancel")):
            answer = call(target, method, f"/v1/turns/{tid}{suffix}".encode())
            assert answer.status == 404 and answer.json()["code"] == "turn_not_found"
    for form in (target.turn_ids[0].upper(), target.turn_ids[0].replace("-", "")):
        assert call(target, "GET", f"/v1/turns/{form}".encode()).status == 200
