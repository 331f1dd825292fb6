"""Many readers blocked on their turns' event streams, in one client (as in the gateway).

Each ``events``/``wait`` holds a Redis connection while it blocks; redis-py's default pool
of 100 refused the 101st reader, and every kick after it ("kick not sent").  Kicks now
have a pool of their own and readers room for ``TURNQ_CLIENT_REDIS_CONNECTIONS``.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.asyncio as aioredis

from producer import AsyncClient
from shared import keys
from shared.settings import Settings
from tests.conftest import NAMESPACE

pytestmark = [pytest.mark.service, pytest.mark.anyio]

READERS = 150


async def test_blocked_readers_beyond_a_hundred_neither_fail_nor_hold_up_kicks(
    stack_env: dict[str, str], uid: str
) -> None:
    settings = Settings(namespace=f"{NAMESPACE}rd{uid}:")  # a queue no worker consumes
    user = f"u-{uid}"
    queue = keys.queue(keys.TURNS_QUEUE, settings.namespace)
    probe = aioredis.Redis.from_url(stack_env["TURNQ_REDIS_URL"])
    async with AsyncClient.from_settings(settings) as client:
        turns = [await client.enqueue(f"rd{i}-{uid}", user, "hi") for i in range(READERS)]

        async def read(turn_id: str) -> None:
            async for _ in client.events(turn_id, user):
                pass

        readers = [asyncio.create_task(read(t.id)) for t in turns]
        try:
            pool = client.redis.connection_pool
            async with asyncio.timeout(30):  # every reader holds a connection, blocked
                while len(pool._in_use_connections) < READERS:  # noqa: ASYNC110 - observable state
                    await asyncio.sleep(0.05)
            for i in range(5):  # every reader is blocked in XREAD: kicks still go out
                await client.enqueue(f"late{i}-{uid}", user, "still there?")
            assert await probe.llen(queue) == READERS + 5
            assert not any(r.done() for r in readers)
        finally:
            for r in readers:
                r.cancel()
            for r in readers:
                with contextlib.suppress(asyncio.CancelledError):
                    await r
            await probe.delete(queue)
            await probe.aclose()
