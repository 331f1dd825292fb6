"""Fixtures shared by the service tests of a turn's event streams."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from producer.streams import StreamHub
from tests.conftest import NAMESPACE


@pytest.fixture
async def r(stack_env: dict[str, str]) -> AsyncIterator[aioredis.Redis]:
    """The state Redis, responses decoded (a module may define its own ``r``)."""
    client = aioredis.Redis.from_url(stack_env["TURNQ_REDIS_URL"], decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def hub(r: aioredis.Redis, uid: str) -> AsyncIterator[StreamHub]:
    """A client's reader hub, its own namespace, a short gather."""
    h = StreamHub(r, f"{NAMESPACE}hub{uid}:", gather_ms=5)
    yield h
    await h.aclose()
