"""Pure ASGI middleware (no buffering, so event streams pass straight through).

* ``MetricsMiddleware`` counts every request by route template and status.
* ``BodyLimitMiddleware`` refuses a body over the limit with a 413 problem before
  anything parses it: at once from ``Content-Length``, or as soon as a chunked body
  passes the limit.
"""

from __future__ import annotations

import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.gateway import metrics
from producer.gateway.problems import ApiProblem


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before answering, ServerErrorMiddleware sends a 500
        streaming = False

        async def send_and_observe(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", ()):
                    if name.lower() == b"content-type":
                        streaming = value.startswith(b"text/event-stream")
            await send(message)

        try:
            await self.app(scope, receive, send_and_observe)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            method = method if method in metrics.METHODS else "other"
            metrics.REQUESTS.labels(method=method, route=route, status=str(status)).inc()
            if not streaming:
                metrics.LATENCY.labels(method=method, route=route).observe(
                    time.perf_counter() - started
                )


class _TooLarge(HTTPException):
    """An HTTPException, so FastAPI's body reader re-raises it instead of calling it a 400."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self) -> str:
        return f"the request body is over the gateway's limit of {self.max_bytes} bytes"

    def _problem(self) -> ApiProblem:
        return ApiProblem(413, "body_too_large", "Content too large", self._detail())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.max_bytes:
            await self._problem().response()(scope, receive, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self._detail())
            return message

        async def observing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, observing_send)
        except _TooLarge:
            if started:
                raise
            await self._problem().response()(scope, receive, send)


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return -1
