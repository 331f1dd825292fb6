"""Read a streamed model response from the socket at most every ``pace_s`` (decision 0015).

At ~80 tokens/s every token of a streamed answer arrives alone, and each costs the worker
a wake-up of its own: the selector, the transport, httpcore's read, the SSE decoder, the
client's parse and the Agents SDK's event, for ~200 bytes.  Reading the socket at most
every ``pace_s`` while an event stream comes in lets the tokens that arrived meanwhile
come in one read: one wake-up for several.  A token waits at most ``pace_s`` more.  Only
event-stream responses are paced, from their second read on (a request's first read, a
JSON body, never wait), and the read after a stream's last event does not wait.

    client = DefaultAsyncHttpxClient(transport=paced_transport(limits, pace_s=0.025))
"""

# ruff: noqa: ASYNC109 - httpcore's network interface takes timeouts as arguments
from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore2
import httpx2

# The last events of a stream: Chat Completions' terminator, the Responses API's ends.
_ENDS = (b"data: [DONE]", b"response.completed", b"response.failed", b"response.incomplete")
_EVENT_STREAM = b"text/event-stream"


def paced_transport(limits: httpx2.Limits, pace_s: float) -> httpx2.AsyncHTTPTransport:
    transport = httpx2.AsyncHTTPTransport(limits=limits)
    pool = transport._pool  # httpx builds its httpcore pool without a backend argument
    assert isinstance(pool, httpcore2.AsyncConnectionPool)
    pool._network_backend = PacedBackend(pool._network_backend, pace_s)
    return transport


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
