"""The gateway's pure parts: key format and hashing, header parsing, SSE encoding, error
mapping, cursor checks, the body limit and the published OpenAPI (no services)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import httpx
import jsonschema
import pytest
from fastapi.exceptions import RequestValidationError
from starlette.types import Receive, Scope, Send

from producer.gateway import keys, sse
from producer.gateway.app import create_app, default_max_body
from producer.gateway.auth import key_from_headers
from producer.gateway.middleware import BodyLimitMiddleware
from producer.gateway.problems import from_turnq_error, validation_problem
from producer.gateway.ratelimit import rate_limit_key
from producer.gateway.routes import check_cursor
from shared.errors import (
    ContentTooLarge,
    IdempotencyConflict,
    InvalidInput,
    SessionBusy,
    SessionNotFound,
    TurnNotCancellable,
    TurnNotFound,
)
from shared.settings import Settings
from shared.validation import check_message, check_metadata


def test_keys_are_random_hashed_and_bound_to_their_prefix() -> None:
    key, prefix, stored = keys.generate()
    assert key.startswith(f"tq_{prefix}_")
    parsed = keys.parse(key)
    assert parsed is not None and parsed[0] == prefix
    secret = parsed[1]
    assert secret not in stored and stored.startswith("sha256$")
    assert keys.verify(prefix, secret, stored)
    assert not keys.verify(prefix, secret[:-1] + ("A" if secret[-1] != "A" else "B"), stored)
    assert not keys.verify("0" * 12, secret, stored), "a secret must not work under another prefix"
    assert keys.generate()[0] != key


@pytest.mark.parametrize(
    "bad",
    ["", "tq_", "tq_abc_def", "xx_0123456789ab_" + "a" * 43, "tq_0123456789ab_" + "a" * 42,
     "tq_0123456789AB_" + "a" * 43, "tq_0123456789ab_" + "a" * 42 + "\x00",
     "tq_0123456789ab_" + "a" * 43 + "\n"],
)  # fmt: skip
def test_malformed_keys_never_reach_the_database(bad: str) -> None:
    assert keys.parse(bad) is None


def test_prefix_of_accepts_a_prefix_or_a_whole_key() -> None:
    key, prefix, _ = keys.generate()
    assert keys.prefix_of(key) == keys.prefix_of(prefix) == keys.prefix_of(f"tq_{prefix}") == prefix
    with pytest.raises(ValueError, match="12 hex digits"):
        keys.prefix_of("not-a-prefix")


def test_key_from_headers() -> None:
    assert key_from_headers("Bearer abc", None) == "abc"
    assert key_from_headers("bearer   abc ", None) == "abc"
    assert key_from_headers(None, " abc ") == "abc"
    assert key_from_headers("Basic dXNlcjpwYXNz", "abc") == "abc"
    assert key_from_headers("Bearer ", None) is None
    assert key_from_headers(None, None) is None


def test_sse_encoding_and_resume_ids() -> None:
    frame = sse.encode("1-0", {"type": "delta", "text": "two\nlines"}, "t1").decode()
    lines = frame.split("\n")
    assert lines[:2] == ["id: 1-0", "event: delta"]
    assert json.loads(lines[2].removeprefix("data: ")) == {
        "type": "delta",
        "text": "two\nlines",
        "turn_id": "t1",
    }
    assert frame.endswith("\n\n") and frame.count("\n") == 4  # the newline stays escaped
    odd = sse.encode("2-0", {"type": "Weird Type\n"}, "t1").decode()
    assert "event:" not in odd
    assert sse.resume_from(None) == "0-0"
    assert sse.resume_from("1732450000000-3") == "1732450000000-3"
    assert sse.resume_from("1732450000000-3-final") == "1732450000000-3"
    for bad in ("0", "$", "abc-1", "1-2-3", "1-0\n"):
        with pytest.raises(ValueError):
            sse.resume_from(bad)


def test_shared_errors_map_to_statuses_and_codes() -> None:
    cases = [
        (InvalidInput("content", "must not be empty"), 422, "invalid_input"),
        (ContentTooLarge("content", "too big"), 413, "content_too_large"),
        (SessionNotFound("s1"), 404, "session_not_found"),
        (TurnNotFound("t1"), 404, "turn_not_found"),
        (IdempotencyConflict("k", "t1"), 409, "idempotency_conflict"),
        (SessionBusy("t1", "running"), 409, "session_busy"),
        (TurnNotCancellable("t1", "succeeded"), 409, "turn_not_cancellable"),
    ]
    for exc, status, code in cases:
        problem = from_turnq_error(exc).problem
        assert (problem.status, problem.code) == (status, code), exc
        assert problem.type == f"urn:turnq:problem:{code}" and problem.detail
    busy = from_turnq_error(SessionBusy("t-123", "running")).problem
    assert busy.turn_id == "t-123" and "t-123" in busy.detail
    invalid = from_turnq_error(InvalidInput("content", "must not be empty")).problem
    assert invalid.errors and invalid.errors[0].field == "content"


def test_not_found_never_names_the_id() -> None:
    """A foreign session and a missing one must give byte-identical bodies (I10)."""
    a = from_turnq_error(SessionNotFound("alices-secret-session")).response().body
    b = from_turnq_error(SessionNotFound("x")).response().body
    assert a == b and b"alices" not in a
    assert from_turnq_error(TurnNotFound("1")).response().body == (
        from_turnq_error(TurnNotFound("2")).response().body
    )


def test_validation_errors_become_400_415_or_422() -> None:
    malformed = RequestValidationError(
        [{"type": "json_invalid", "loc": ("body", 3), "msg": "JSON decode error", "ctx": {}}]
    )
    assert validation_problem(malformed).problem.status == 400
    not_json = RequestValidationError(
        [{"type": "model_attributes_type", "loc": ("body",), "msg": "x", "input": b"hi"}]
    )
    assert validation_problem(not_json).problem.status == 415
    fields = RequestValidationError(
        [
            {"type": "missing", "loc": ("body", "content"), "msg": "Field required"},
            {"type": "string_pattern_mismatch", "loc": ("path", "session_id"), "msg": "x"},
        ]
    )
    problem = validation_problem(fields).problem
    assert problem.status == 422 and problem.errors is not None
    assert [(e.field, e.location) for e in problem.errors] == [
        ("content", "body"),
        ("session_id", "path"),
    ]
    assert "letters, digits" in problem.errors[1].message


def test_forged_cursors_are_refused_before_sql() -> None:
    def cursor(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    good = cursor(["2026-01-01T00:00:00+00:00", "6f1c1f7e-4a55-4a4f-9a51-2b0d8f3c6a10"])
    assert check_cursor(good) == good
    assert check_cursor(None) is None
    for forged in (
        "!!!",
        cursor(5),
        cursor(["2026-01-01T00:00:00+00:00", "not-a-uuid"]),  # used to reach SQL: a 500
        cursor(["2026-01-01T00:00:00", "6f1c1f7e-4a55-4a4f-9a51-2b0d8f3c6a10"]),
        cursor(["x", "y", "z"]),
    ):
        with pytest.raises(InvalidInput, match="cursor"):
            check_cursor(forged)


def test_rate_limit_key_is_namespaced() -> None:
    assert rate_limit_key("alice", "t1:") == "t1:turnq:ratelimit:alice"


async def _echo_body(scope: Scope, receive: Receive, send: Send) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def test_body_limit_refuses_declared_and_streamed_bodies() -> None:
    app = BodyLimitMiddleware(_echo_body, max_bytes=10)

    async def chunks(n: int) -> AsyncIterator[bytes]:
        for _ in range(n):
            yield b"12345"

    async def run() -> list[tuple[int, str]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            out = []
            for kw in ({"content": b"x" * 10}, {"content": b"x" * 11}, {"content": chunks(3)}):
                r = await c.post("/", **kw)  # type: ignore[arg-type]
                out.append((r.status_code, r.headers.get("content-type", "")))
            return out

    ok, declared, streamed = asyncio.run(run())
    assert ok[0] == 200
    assert declared == (413, "application/problem+json")
    assert streamed == (413, "application/problem+json")


def test_openapi_documents_auth_and_problems_for_every_route() -> None:
    settings = Settings(max_id_length=64, gateway_max_wait_s=30)
    schema = create_app(settings).openapi()
    assert set(schema["paths"]) == {
        "/v1/sessions/{session_id}/turns",
        "/v1/turns/{turn_id}",
        "/v1/turns/{turn_id}/events",
        "/v1/turns/{turn_id}/cancel",
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/items",
        "/v1/agents",
        "/v1/usage",
        "/v1/turns/{turn_id}/approvals",
        "/v1/approvals",
        "/healthz",
        "/metrics",
    }
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            for code, response in responses.items():
                if int(code) >= 400 and path.startswith("/v1"):
                    assert list(response["content"]) == ["application/problem+json"], (path, code)
            if path.startswith("/v1"):
                assert {"401", "422", "429", "503"} <= set(responses), (method, path)
                assert op["security"] == [{"bearer": []}, {"apiKey": []}]
                assert "WWW-Authenticate" in responses["401"]["headers"]
                assert "Retry-After" in responses["429"]["headers"]
            for param in op.get("parameters", []):
                assert "anyOf" not in param["schema"], (path, param)
    turns = schema["paths"]["/v1/sessions/{session_id}/turns"]["post"]
    session_param = next(p for p in turns["parameters"] if p["name"] == "session_id")
    assert session_param["schema"]["maxLength"] == 64
    wait = next(p for p in schema["paths"]["/v1/turns/{turn_id}"]["get"]["parameters"]
                if p["name"] == "wait")  # fmt: skip
    assert wait["schema"]["maximum"] == 30
    body = schema["components"]["schemas"]["TurnCreate"]["properties"]["idempotency_key"]
    assert {"type": "string", "maxLength": 64}.items() <= body["anyOf"][0].items()
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_the_default_body_limit_makes_room_for_attachments_and_metadata() -> None:
    """Bounded by the text alone, any image over ~130 KB was a 413 body_too_large however
    high TURNQ_MAX_ATTACHMENT_BYTES was."""
    s = Settings(max_attachment_bytes=5_000_000, max_metadata_bytes=10_000)
    assert default_max_body(s) == 4 * s.max_content_bytes + 5_000_000 + 40_000 + 4096
    assert default_max_body(Settings()) > Settings().max_attachment_bytes


PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAE="
# A message each: content (str or parts) and metadata; the schema and shared.validation
# must agree on every one.
MESSAGES: list[tuple[object, object]] = [
    ("hello", None),
    ("   ", None),
    ("a\x00b", None),
    ([{"type": "input_text", "text": "hi"}], {"a": [1, {"b": None}], "c": 1.5}),
    ([{"type": "input_text", "text": "  "}], None),
    ([{"type": "input_text", "text": "  "}, {"type": "input_image", "image_url": PNG}], None),
    ([{"type": "input_text", "text": " "}, {"type": "input_text", "text": "x"}], None),
    ([{"type": "input_text"}], None),
    ([{"type": "input_text", "text": "a\x00"}], None),
    ([{"type": "input_text", "text": "x", "extra": 1}], None),
    ([{"type": {}, "text": "x"}], None),
    ([{"type": "input_audio", "text": "x"}], None),
    (["x"], None),
    ([], None),
    ([{"type": "input_text", "text": "x"}] * 32, None),
    ([{"type": "input_text", "text": "x"}] * 33, None),
    ([{"type": "input_image", "image_url": "https://e.com/a.png", "detail": "low"}], None),
    ([{"type": "input_image", "image_url": "https://e.com/a.png", "detail": "max"}], None),
    ([{"type": "input_image", "image_url": "https://e.com/a b.png"}], None),
    ([{"type": "input_image", "image_url": "https://"}], None),
    ([{"type": "input_image", "image_url": "http://e.com/a.png"}], None),
    ([{"type": "input_image", "image_url": "javascript:alert(1)"}], None),
    ([{"type": "input_image", "image_url": PNG, "file_id": None, "detail": None}], None),
    ([{"type": "input_image", "image_url": PNG, "file_id": "f1"}], None),
    ([{"type": "input_image", "file_id": "file-1"}], None),
    ([{"type": "input_image", "file_id": "bad id"}], None),
    ([{"type": "input_image"}], None),
    ([{"type": "input_image", "image_url": "data:image/PNG;BASE64,iVBO Rw=="}], None),
    ([{"type": "input_image", "image_url": "data:image/png;base64,abc"}], None),
    ([{"type": "input_image", "image_url": "data:image/png;base64,QUJ=="}], None),
    ([{"type": "input_image", "image_url": "data:text/html;base64,PGI+"}], None),
    ([{"type": "input_image", "image_url": "DATA:image/png;base64,iVBORw=="}], None),
    ([{"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0="}], None),
    ([{"type": "input_file", "file_data": "https://e.com/a.pdf"}], None),
    ([{"type": "input_file", "file_url": "https://e.com/a.pdf", "filename": "a.pdf"}], None),
    ([{"type": "input_file", "file_url": "https://e.com/a.pdf", "filename": "../a"}], None),
    ([{"type": "input_file", "file_url": "file:///etc/passwd"}], None),
    ([{"type": "input_file", "file_id": "f", "file_url": None, "filename": None}], None),
    ("hi", {"k": "v\x00"}),
    ("hi", {"k\x00": 1}),
    ("hi", [1]),
    ("hi", {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}),
    ("hi", {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}),
    ("hi", {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}}),
    ("hi", {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": []}}}}}}}}),
]


@pytest.fixture(scope="module")
def turn_schema() -> jsonschema.Draft202012Validator:
    openapi = create_app(Settings()).openapi()
    return jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/TurnCreate", "components": openapi["components"]}
    )


@pytest.mark.parametrize(("content", "metadata"), MESSAGES)
def test_the_published_turn_schema_agrees_with_the_checks(
    turn_schema: jsonschema.Draft202012Validator, content: object, metadata: object
) -> None:
    """What the OpenAPI says a turn may hold is what shared.validation accepts, so a client
    built from the schema never meets a refusal it could not know about, and nothing the
    schema forbids gets in (the Schemathesis suite relies on it)."""
    validator = turn_schema
    body = {"content": content, "metadata": metadata, "agent": "Assistant"}
    by_schema = validator.is_valid(body)
    try:
        check_message(content, 32768, 8 * 1024 * 1024)
        check_metadata(metadata, 8192)
    except InvalidInput:
        by_checks = False
    else:
        by_checks = True
    assert by_schema == by_checks, (content, metadata)
    assert not validator.is_valid({**body, "agent": "Somebody"})  # the deployment's names
