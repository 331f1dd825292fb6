"""Problem Details (RFC 9457) for every error the gateway answers.

    raise ApiProblem(409, "session_busy", "Session busy", "turn ... is running", turn_id=...)

Every 4xx says what was wrong and how to fix it; ``code`` is stable and machine
readable (the ``shared.errors`` codes where one exists).  A 404 for a session or
turn never names the id it was asked for, so a session that belongs to someone else
and one that does not exist give byte-identical answers (I10).  Only a genuine
server fault is a 500; a database or Redis outage is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.responses import Response

from shared.errors import (
    AgentConflict,
    ApprovalConflict,
    ApprovalNotFound,
    ApprovalNotPending,
    ContentTooLarge,
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    SessionBusy,
    SessionNotFound,
    TurnNotCancellable,
    TurnNotFound,
    TurnqError,
    WaitTimeout,
)

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"


class FieldError(BaseModel):
    field: str = Field(description="the offending field, e.g. `content` or `limit`")
    location: str | None = Field(
        default=None, description="where it was: body, path, query or header"
    )
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details, plus ``code`` and error-specific members."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "type": "urn:turnq:problem:session_not_found",
                "title": "Session not found",
                "status": 404,
                "detail": "No session with this id exists for this API key.",
                "code": "session_not_found",
            }
        }
    )

    type: str = Field(description="a URN naming the problem: urn:turnq:problem:<code>")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    code: str
    errors: list[FieldError] | None = Field(
        default=None, description="each invalid field (validation problems only)"
    )
    turn_id: str | None = Field(
        default=None, description="the turn the conflict is about (busy session, cancel)"
    )
    turn_status: str | None = Field(default=None, description="that turn's status")
    entry_agent: str | None = Field(
        default=None, description="the session's entry agent (agent_conflict)"
    )


class ApiProblem(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        *,
        errors: Sequence[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        turn_id: str | None = None,
        turn_status: str | None = None,
        entry_agent: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.problem = Problem(
            type=f"urn:turnq:problem:{code}",
            title=title,
            status=status,
            detail=detail,
            code=code,
            errors=list(errors) if errors is not None else None,
            turn_id=turn_id,
            turn_status=turn_status,
            entry_agent=entry_agent,
        )
        self.headers = headers or {}

    def response(self) -> Response:
        return problem_response(self.problem, self.headers)


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(problem.model_dump(exclude_none=True), ensure_ascii=False)
    return Response(body, problem.status, headers=headers, media_type=MEDIA_TYPE)


# The one body for an unknown *or foreign* session/turn: it never names the id.
def session_not_found() -> ApiProblem:
    return ApiProblem(
        404,
        SessionNotFound.code,
        "Session not found",
        "No session with this id exists for this API key.",
    )


def turn_not_found() -> ApiProblem:
    return ApiProblem(
        404, TurnNotFound.code, "Turn not found", "No turn with this id exists for this API key."
    )


def unauthorized(detail: str, *, invalid: bool) -> ApiProblem:
    challenge = 'Bearer realm="turnq"' + (', error="invalid_token"' if invalid else "")
    return ApiProblem(
        401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": challenge}
    )


def unavailable(what: str) -> ApiProblem:
    return ApiProblem(
        503,
        "unavailable",
        "Service unavailable",
        f"{what} is not answering; retry shortly (accepted turns are not lost).",
        headers={"Retry-After": "2"},
    )


def from_turnq_error(exc: TurnqError) -> ApiProblem:
    """Map ``shared.errors`` to HTTP."""
    if isinstance(exc, ContentTooLarge):
        return ApiProblem(
            413,
            exc.code,
            "Content too large",
            str(exc),
            errors=[FieldError(field=exc.field, location="body", message=exc.message)],
        )
    if isinstance(exc, InvalidInput):
        return ApiProblem(
            422,
            exc.code,
            "Invalid input",
            str(exc),
            errors=[FieldError(field=exc.field, message=exc.message)],
        )
    if isinstance(exc, TurnNotFound):
        return turn_not_found()
    if isinstance(exc, ApprovalNotFound):  # a NotFound too: before the session's 404
        return ApiProblem(404, exc.code, "Approval not found", str(exc))
    if isinstance(exc, NotFound):
        return session_not_found()
    if isinstance(exc, SessionBusy):
        return ApiProblem(
            409,
            exc.code,
            "Session busy",
            f"{exc} (multitask_strategy=reject); wait for it, or send with "
            "enqueue, interrupt or rollback",
            turn_id=exc.turn_id,
            turn_status=exc.status,
        )
    if isinstance(exc, IdempotencyConflict):
        return ApiProblem(
            409,
            exc.code,
            "Idempotency key reused",
            f"{exc}; use a new key for a new message",
            turn_id=exc.turn_id,
        )
    if isinstance(exc, ApprovalConflict | ApprovalNotPending):
        status = exc.recorded if isinstance(exc, ApprovalConflict) else exc.status
        title = "Already decided" if isinstance(exc, ApprovalConflict) else "Not pending"
        return ApiProblem(409, exc.code, title, str(exc), turn_id=exc.turn_id, turn_status=status)
    if isinstance(exc, AgentConflict):
        return ApiProblem(
            409,
            exc.code,
            "Agent conflict",
            str(exc),
            entry_agent=exc.entry_agent,
        )
    if isinstance(exc, TurnNotCancellable):
        return ApiProblem(
            409,
            exc.code,
            "Turn not cancellable",
            str(exc),
            turn_id=exc.turn_id,
            turn_status=exc.status,
        )
    if isinstance(exc, WaitTimeout):
        return ApiProblem(504, exc.code, "Timed out", str(exc))
    return ApiProblem(500, exc.code, "Internal error", "the request could not be completed")


MAX_FIELD_CHARS = 100
_ID_RULE = "may contain only letters, digits and . _ : @ - (and must start with a letter or digit)"
_FRIENDLY = {  # (field or "*", pydantic error type): message
    ("*", "uuid_parsing"): "must be a turn id (a UUID, as returned when the turn was accepted)",
    ("*", "uuid_type"): "must be a turn id (a UUID, as returned when the turn was accepted)",
    ("*", "extra_forbidden"): "is not a field of this request",
    ("session_id", "string_pattern_mismatch"): _ID_RULE,
    ("idempotency_key", "string_pattern_mismatch"): _ID_RULE,
    ("Last-Event-ID", "string_pattern_mismatch"): "must be an event id this stream sent, "
    "e.g. 1732450000000-0",
    ("after", "string_pattern_mismatch"): "must be an event id this stream sent, "
    "e.g. 1732450000000-0",
}


def _field_errors(errors: Sequence[Any]) -> list[FieldError]:
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ())]
        where = loc[0] if loc and loc[0] in ("body", "path", "query", "header") else None
        rest = loc[1:] if where else loc
        field, kind = ".".join(rest), str(e.get("type"))
        if len(field) > MAX_FIELD_CHARS:  # an unknown key is the caller's text: never echo it all
            field = field[:MAX_FIELD_CHARS] + "…"
        message = _FRIENDLY.get((field, kind)) or _FRIENDLY.get(("*", kind)) or str(e.get("msg"))
        out.append(FieldError(field=field or where or "request", location=where, message=message))
    return out


def validation_problem(exc: RequestValidationError) -> ApiProblem:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        ctx = next((e.get("ctx") or {} for e in errors if e.get("type") == "json_invalid"), {})
        return ApiProblem(
            400,
            "malformed_json",
            "Malformed JSON",
            f"the request body is not valid JSON ({ctx.get('error', 'decode error')})",
        )
    if any(
        e.get("loc") == ("body",) and isinstance(e.get("input"), bytes | bytearray) for e in errors
    ):
        return ApiProblem(
            415,
            "unsupported_media_type",
            "Unsupported media type",
            "send the body as JSON with Content-Type: application/json",
        )
    fields = _field_errors(errors)
    summary = "; ".join(f"{f.field}: {f.message}" for f in fields[:5])
    return ApiProblem(422, InvalidInput.code, "Invalid input", summary, errors=fields)


_HTTP = {  # status: (code, title)
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("no_such_route", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    413: ("body_too_large", "Content too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


def http_problem(exc: HTTPException) -> ApiProblem:
    code, title = _HTTP.get(exc.status_code, ("http_error", "Error"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        code, title = "malformed_json", "Malformed JSON"
        detail = "the request body could not be parsed as JSON (nested too deeply?)"
    if exc.status_code == 404 and detail == "Not Found":
        detail = "no such route; see /openapi.json"
    if exc.status_code == 405:
        detail = f"method not allowed here; allowed: {(exc.headers or {}).get('Allow', '-')}"
    return ApiProblem(exc.status_code, code, title, detail, headers=dict(exc.headers or {}))


DEPENDENCY_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeout,
    RedisError,
    ConnectionError,
    TimeoutError,
)


def dependency_of(exc: BaseException) -> str:
    return "Redis" if isinstance(exc, RedisError) else "Postgres"


async def handle_api_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiProblem)
    return exc.response()


async def handle_turnq_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TurnqError)
    return from_turnq_error(exc).response()


async def handle_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problem = validation_problem(exc)
    if problem.problem.status == 400:
        # The body is parsed before dependencies run; authenticate first all the same, so a
        # caller without a valid key always learns that before anything else.
        from producer.gateway.auth import authenticate_request

        try:
            await authenticate_request(request)
        except ApiProblem as auth_problem:
            return auth_problem.response()
    return problem.response()


async def handle_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        # Starlette names only the first route that matched the path; name them all.
        allow = allowed_methods(request, (exc.headers or {}).get("Allow", ""))
        exc.headers = {**(exc.headers or {}), "Allow": allow}
    return http_problem(exc).response()


def allowed_methods(request: Request, fallback: str) -> str:
    """The methods the published OpenAPI documents for this path (every route, not the first)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {m.upper() for m in operations}
    return ", ".join(sorted(methods)) or fallback


async def handle_dependency(request: Request, exc: Exception) -> Response:
    if (
        isinstance(exc, DBAPIError)
        and not exc.connection_invalidated
        and not isinstance(exc, OperationalError | InterfaceError)
    ):
        return await handle_fault(request, exc)
    log.warning("dependency unavailable: %s", type(exc).__name__, exc_info=True)
    return unavailable(dependency_of(exc)).response()


async def handle_fault(request: Request, exc: Exception) -> Response:
    """A genuine server fault: logged with its traceback, answered without internals."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return ApiProblem(
        500, "internal_error", "Internal error", "the gateway failed; this is a bug, logged"
    ).response()
