"""Many readers blocked on their turns' event streams, in one client (as in the gateway).

Each ``events``/``wait`` once held a Redis connection and sent one ``XREAD`` per entry
while it blocked; redis-py's default pool of 100 refused the 101st reader, and every kick
after it.  Readers now share the client's hub (producer.streams): one connection, one
blocked ``XREAD`` for all of them, and the state pool stays free for short commands.
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


async def test_blocked_readers_share_one_connection_and_all_get_their_events(
    stack_env: dict[str, str], uid: str
) -> None:
    settings = Settings(namespace=f"{NAMESPACE}rd{uid}:")  # a queue no worker consumes
    user = f"u-{uid}"
    queue = keys.queue(keys.TURNS_QUEUE, settings.namespace)
    probe = aioredis.Redis.from_url(stack_env["TURNQ_REDIS_URL"], decode_responses=True)
    async with AsyncClient.from_settings(settings) as client:
        turns = [await client.enqueue(f"rd{i}-{uid}", user, "hi") for i in range(READERS)]
        seen: dict[str, list[tuple[str, dict[str, str]]]] = {t.id: [] for t in turns}

        async def read(turn_id: str) -> None:
            async for entry in client.events(turn_id, user):
                seen[turn_id].append(entry)

        readers = [asyncio.create_task(read(t.id)) for t in turns]
        try:
            async with asyncio.timeout(30):
                while client.hub.subscriptions < READERS or not client.hub._blocked:  # noqa: ASYNC110 - observable state
                    await asyncio.sleep(0.05)
            # every reader is blocked, none on a connection of the state pool
            assert len(client.redis.connection_pool._in_use_connections) == 0
            assert len(client.hub._redis.connection_pool._in_use_connections) == 1
            for i in range(5):  # kicks still go out
                await client.enqueue(f"late{i}-{uid}", user, "still there?")
            assert await probe.llen(queue) == READERS + 5
            assert not any(r.done() for r in readers)

            events = [{"type": "status", "status": "running"}, {"type": "delta", "text": "x"}]
            end = {"type": "status", "status": "succeeded"}
            for t in turns:  # as a worker writes them
                for event in [*events, {"type": "delta", "text": t.id}, end]:
                    await probe.xadd(keys.events_key(t.id, settings.namespace), event)
            async with asyncio.timeout(30):
                await asyncio.gather(*readers)
            for t in turns:
                written = await probe.xrange(keys.events_key(t.id, settings.namespace))
                assert seen[t.id] == written
                assert [e for _, e in seen[t.id]][-2:] == [{"type": "delta", "text": t.id}, end]
            assert client.hub.subscriptions == 0
        finally:
            for r in readers:
                r.cancel()
            for r in readers:
                with contextlib.suppress(asyncio.CancelledError):
                    await r
            await probe.delete(queue)
            await probe.aclose()


async def test_cancelled_readers_leave_no_subscription(stack_env: dict[str, str], uid: str) -> None:
    """A client that goes away (an SSE disconnect cancels its reader) unsubscribes."""
    settings = Settings(namespace=f"{NAMESPACE}rc{uid}:")
    user = f"u-{uid}"
    async with AsyncClient.from_settings(settings) as client:
        turn = await client.enqueue(f"rc-{uid}", user, "hi")

        async def read() -> None:
            async for _ in client.events(turn.id, user):
                pass

        async def wait() -> None:
            await client.wait(turn.id, timeout=60, user_id=user)

        tasks = [asyncio.create_task(f()) for f in (read, read, wait, wait)]
        async with asyncio.timeout(30):
            while client.hub.subscriptions < len(tasks):  # noqa: ASYNC110 - observable state
                await asyncio.sleep(0.02)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        assert client.hub.subscriptions == 0
        task = client.hub._task
    assert task is not None and task.done()  # aclose stopped the hub
    async with aioredis.Redis.from_url(stack_env["TURNQ_REDIS_URL"]) as probe:
        await probe.delete(keys.queue(keys.TURNS_QUEUE, settings.namespace))
