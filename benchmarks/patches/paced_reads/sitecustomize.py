"""Benchmark-only: a streamed model response is read from the socket at most every pace.

Put this folder on ``PYTHONPATH`` of a worker with ``BENCH_READ_PACE_MS`` (B9's
``paced_25ms`` / ``paced_50ms`` arms; decision 0015, measured and dropped).  At ~80
tokens/s every token arrives alone and costs the worker a wake-up of its own; reading the
socket at most every pace while an event stream comes in lets the tokens that arrived
meanwhile come in one read.  A token waits at most one pace more.  Only event-stream
responses are paced, from their second read on, and not after a stream's last event.
"""

# ruff: noqa: ASYNC109 - httpcore's network interface takes timeouts as arguments
import asyncio
import os
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore2

import shared.models as _models

# The last events of a stream: Chat Completions' terminator, the Responses API's ends.
_ENDS = (b"data: [DONE]", b"response.completed", b"response.failed", b"response.incomplete")
_EVENT_STREAM = b"text/event-stream"


class PacedStream(httpcore2.AsyncNetworkStream):
    def __init__(self, inner: httpcore2.AsyncNetworkStream, pace_s: float) -> None:
        self.inner = inner
        self.pace_s = pace_s
        self.first = True  # the next read is a response's first
        self.streaming = False  # an event stream is coming in: pace the reads
        self.last = 0.0

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        loop = asyncio.get_running_loop()
        if self.streaming and (wait := self.last + self.pace_s - loop.time()) > 0:
            await asyncio.sleep(wait)
        data = await self.inner.read(max_bytes, timeout)
        self.last = loop.time()
        if self.first:
            self.first = False
            self.streaming = _EVENT_STREAM in data.partition(b"\r\n\r\n")[0].lower()
        if self.streaming and (not data or any(end in data for end in _ENDS)):
            self.streaming = False
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.first, self.streaming = True, False  # a new request on this connection
        await self.inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        tls = await self.inner.start_tls(ssl_context, server_hostname, timeout)
        return PacedStream(tls, self.pace_s)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class PacedBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self, inner: httpcore2.AsyncNetworkBackend, pace_s: float) -> None:
        self.inner = inner
        self.pace_s = pace_s

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        stream = await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return PacedStream(stream, self.pace_s)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        stream = await self.inner.connect_unix_socket(path, timeout, socket_options)
        return PacedStream(stream, self.pace_s)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


_client = _models._client


def _paced(settings):  # type: ignore[no-untyped-def]
    client = _client(settings)
    pool = client._client._transport._pool  # httpx builds its pool without a backend argument
    pace_s = float(os.environ.get("BENCH_READ_PACE_MS", "25")) / 1000
    pool._network_backend = PacedBackend(pool._network_backend, pace_s)
    return client


_models._client = _paced
