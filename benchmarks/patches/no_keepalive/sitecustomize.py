"""Benchmark-only: the OpenAI client's HTTP connections are never reused.

Put this folder on ``PYTHONPATH`` of a worker (``benchmarks/levers.py``'s
``no_keepalive`` arm, ``--model stream``): the client keeps no idle connection, so every
model call opens (and closes) its own TCP connection -- what connection reuse saves.
"""

import httpx2
from openai import AsyncOpenAI, DefaultAsyncHttpxClient

import shared.models as _models

_client = _models._client


def _no_keepalive(settings):  # type: ignore[no-untyped-def]
    reused = _client(settings)
    limits = httpx2.Limits(max_connections=10_000, max_keepalive_connections=0)
    return AsyncOpenAI(
        api_key=reused.api_key,
        base_url=reused.base_url,
        timeout=reused.timeout,
        max_retries=0,
        http_client=DefaultAsyncHttpxClient(limits=limits),
    )


_models._client = _no_keepalive
