"""The HTTP gateway's FastAPI app: ``create_app(settings)``; ``turnq gateway`` serves it.

    app = create_app(get_settings())
    uvicorn.run(app, host="127.0.0.1", port=8000)

Layers, outermost first: metrics → body-size limit → FastAPI (auth + rate limit as a
dependency of every ``/v1`` route, then validation, then the route).  Every error is
a Problem Details body (``problems.py``); ``/openapi.json`` documents each one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from producer.client import AsyncClient
from producer.gateway import problems
from producer.gateway.keys import KeyStore
from producer.gateway.middleware import BodyLimitMiddleware, MetricsMiddleware
from producer.gateway.models import DependencyState as Dep
from producer.gateway.models import Health
from producer.gateway.ratelimit import RateLimiter
from producer.gateway.review import add_review_routes
from producer.gateway.routes import build_router
from producer.gateway.schemas import patch_turn_create
from producer.gateway.state import Gateway, gateway_of
from shared import keys
from shared.errors import TurnqError
from shared.metrics import register_cluster_collector
from shared.registry import AgentSpecError, registry_for
from shared.settings import Settings

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 2.0
WORKERS_CACHE_S = 10.0

DESCRIPTION = """\
Send chat turns to turnq's agents and read their results from any language.

Authenticate with `Authorization: Bearer <key>` (or `X-API-Key: <key>`); create a key
with `turnq keys create --user U`.  Every session and turn belongs to the key's user:
another user's session or turn answers exactly like one that does not exist (404).
Errors are `application/problem+json` (RFC 9457) with a stable `code`.
"""


def _version() -> str:
    try:
        return version("turnq")
    except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return "0.0.0"


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = AsyncClient.from_settings(settings)
        register_cluster_collector(settings.require_redis_url(), namespace=settings.namespace)
        app.state.gateway = Gateway(
            settings=settings,
            client=client,
            keys=KeyStore(client.db.engine),
            limiter=RateLimiter(
                client.redis,
                rate_per_s=settings.gateway_rate_per_s,
                burst=settings.gateway_rate_burst,
                namespace=settings.namespace,
            ),
        )
        try:
            yield
        finally:
            await client.close()

    app = FastAPI(
        title="turnq",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        redoc_url=None,
    )
    app.include_router(build_router(settings))
    _add_operational_routes(app)
    add_review_routes(app)
    _add_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.gateway_max_body_bytes or default_max_body(settings),
    )
    app.add_middleware(MetricsMiddleware)
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    return app


def default_max_body(settings: Settings) -> int:
    """Room for the largest turn the limits allow: its text as JSON (escaped up to 4x), its
    images and files (data URLs are ASCII), its metadata, and 4 KiB for the rest.  Bounded
    by the text alone, any attachment over ~130 KB was refused as body_too_large however
    high TURNQ_MAX_ATTACHMENT_BYTES was set."""
    return (
        4 * settings.max_content_bytes
        + settings.max_attachment_bytes
        + 4 * settings.max_metadata_bytes
        + 4096
    )


Handler = Callable[[Request, Exception], Awaitable[Response]]


def _add_error_handlers(app: FastAPI) -> None:
    handlers: list[tuple[type[Exception], Handler]] = [
        (problems.ApiProblem, problems.handle_api_problem),
        (TurnqError, problems.handle_turnq_error),
        (RequestValidationError, problems.handle_validation),
        (HTTPException, problems.handle_http),
        (DBAPIError, problems.handle_dependency),
        *((exc, problems.handle_dependency) for exc in problems.DEPENDENCY_ERRORS),
        (Exception, problems.handle_fault),
    ]
    for exc_class, handler in handlers:
        app.add_exception_handler(exc_class, handler)


def _add_operational_routes(app: FastAPI) -> None:
    @app.get(
        "/healthz",
        response_model=Health,
        responses={503: {"model": Health, "description": "Postgres or Redis not answering"}},
        summary="Dependencies: postgres, redis, broker if separate (required), workers (reported)",
        tags=["operations"],
    )
    async def healthz(request: Request) -> JSONResponse:
        gw = gateway_of(request)
        client = gw.client
        checks = [_check_postgres(client), _timed(client.redis.ping)]
        if gw.settings.separate_broker:  # TURNQ_BROKER_URL: the queues' own server
            checks.append(_timed(client.broker.ping))
        pg, redis, *broker = await asyncio.gather(*checks)
        required = {"postgres": pg, "redis": redis, **({"broker": broker[0]} if broker else {})}
        ok = all(dep.status == "ok" for dep in required.values())
        workers = (
            await _check_workers(gw)
            if (broker or [redis])[0].status == "ok"
            else Dep(status="unknown")
        )
        health = Health(
            status="ok" if ok else "unavailable",
            checks={**required, "workers": workers},
        )
        return JSONResponse(health.model_dump(exclude_none=True), status_code=200 if ok else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        summary="Prometheus metrics",
        tags=["operations"],
    )
    async def metrics_endpoint() -> Response:
        # The cluster collector reads Redis synchronously: keep it off the event loop.
        body = await asyncio.to_thread(generate_latest, REGISTRY)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _timed(check: Callable[[], Awaitable[object]]) -> Dep:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await check()
    except Exception as exc:
        return Dep(status="down", detail=f"{type(exc).__name__}: {exc}"[:200])
    return Dep(status="ok", latency_ms=round((time.perf_counter() - started) * 1000, 2))


async def _check_postgres(client: AsyncClient) -> Dep:
    async def query() -> None:
        async with client.db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    return await _timed(query)


async def _check_workers(gw: Gateway) -> Dep:
    """How many workers consume this deployment's turns queue (cached: it costs ~1 s)."""
    if not gw.settings.gateway_check_workers:
        return Dep(status="unknown", detail="not checked (TURNQ_GATEWAY_CHECK_WORKERS=false)")
    now = time.monotonic()
    if gw.workers_cache and now - gw.workers_cache[0] < WORKERS_CACHE_S:
        return Dep.model_validate(gw.workers_cache[1])
    turns = keys.queue(keys.TURNS_QUEUE, gw.settings.namespace)

    def ask() -> int:
        replies: Any = gw.client.celery.control.inspect(timeout=1.0).active_queues() or {}
        return sum(1 for qs in replies.values() if any(q.get("name") == turns for q in qs or []))

    try:
        count = await asyncio.wait_for(asyncio.to_thread(ask), 3.0)
    except Exception as exc:
        state = Dep(status="unknown", detail=f"{type(exc).__name__}")
    else:
        state = Dep(
            status="ok" if count else "down",
            count=count,
            detail=None if count else "no worker consumes the turns queue; turns wait",
        )
    gw.workers_cache = (now, state.model_dump())
    return state


def _openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's schema, with problem responses as application/problem+json and the
    deployment's limits (id length) written in, so schema-driven clients see the truth."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    headers = {
        "401": {"WWW-Authenticate": "the auth scheme (Bearer)"},
        "429": {"Retry-After": "seconds until a request will be accepted"},
        "503": {"Retry-After": "seconds to wait before retrying"},
    }
    for operations in schema.get("paths", {}).values():
        for op in operations.values():
            for code, response in op.get("responses", {}).items():
                json_body = response.get("content", {}).get("application/json", {})
                if json_body.get("schema", {}).get("$ref", "").endswith("/Problem"):
                    response["content"] = {problems.MEDIA_TYPE: json_body}
                for name, description in headers.get(code, {}).items():
                    response.setdefault("headers", {})[name] = {
                        "description": description,
                        "schema": {"type": "string"},
                    }
            if op.get("operationId", "").startswith("create_turn"):
                op["responses"]["202"]["headers"] = {
                    "Location": {"description": "the turn", "schema": {"type": "string"}}
                }
            for param in op.get("parameters", []):
                _not_null(param)
    components = schema.get("components", {}).get("schemas", {})
    body = components.get("TurnCreate", {})
    for variant in body.get("properties", {}).get("idempotency_key", {}).get("anyOf", []):
        if variant.get("type") == "string":
            variant["maxLength"] = settings.max_id_length
    patch_turn_create(components, _agent_names(settings))
    app.openapi_schema = schema
    return schema


def _agent_names(settings: Settings) -> list[str] | None:
    """The deployment's entry agents (what ``agent`` may name), if its agents load."""
    try:
        return registry_for(settings.agent, settings.context_factory).names
    except AgentSpecError:
        log.warning("TURNQ_AGENT does not load; the schema lists no agent names", exc_info=True)
        return None


def _not_null(param: dict[str, Any]) -> None:
    """An optional query or header parameter is absent, never JSON null: say so."""
    variants = param.get("schema", {}).get("anyOf")
    if not variants:
        return
    kept = [v for v in variants if v.get("type") != "null"]
    if len(kept) == 1:
        extra = {k: v for k, v in param["schema"].items() if k != "anyOf"}
        param["schema"] = {**kept[0], **extra}
