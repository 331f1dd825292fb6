"""SessionLock.heartbeat always ends when its block ends (found by tests/chaos).

redis-py can swallow a cancellation that lands while a command is in flight: the command
completes and the coroutine goes on.  A heartbeat that relied on its cancellation alone
then renewed the session lock forever, and the drain waiting for it never returned: the
session's later turns stayed queued (the reaper skips sessions with a live lock).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.locks import SessionLock

pytestmark = [pytest.mark.service, pytest.mark.anyio]


async def test_heartbeat_ends_even_when_its_cancel_lands_mid_renew(
    stack_env: dict[str, str], uid: str
) -> None:
    r: Any = aioredis.Redis.from_url(stack_env["TURNQ_REDIS_URL"], socket_timeout=10)
    try:
        for i in range(300):  # a renew every 2 ms: many exits land in the middle of one
            lock = SessionLock(r, f"{uid}-{i}", ttl_s=5, heartbeat_s=0.002)
            assert await lock.acquire()
            cm = lock.heartbeat()
            await cm.__aenter__()
            await asyncio.sleep(random.uniform(0, 0.01))
            leaving = asyncio.ensure_future(cm.__aexit__(None, None, None))
            done, _ = await asyncio.wait({leaving}, timeout=5)
            assert done, f"the heartbeat did not end (exit {i}): its session would be stuck"
            await lock.release()
            assert await lock.holder() is None  # nothing renews a released lock
    finally:
        await r.aclose()
