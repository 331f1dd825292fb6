"""SessionLock against real Redis: token-owned, renew/release by token, re-taken after a flush."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.locks import SessionLock

pytestmark = [pytest.mark.service, pytest.mark.anyio]


@pytest.fixture
async def r(stack_env: dict[str, str]) -> Any:
    client = aioredis.Redis.from_url(stack_env["TURNQ_REDIS_URL"])
    yield client
    await client.aclose()


async def test_only_one_holder(r: Any, uid: str) -> None:
    a, b = SessionLock(r, uid, ttl_s=5), SessionLock(r, uid, ttl_s=5)
    assert await a.acquire()
    assert not await b.acquire()
    assert await a.holder() == a.token


async def test_release_only_by_token(r: Any, uid: str) -> None:
    a, b = SessionLock(r, uid, ttl_s=5), SessionLock(r, uid, ttl_s=5)
    assert await a.acquire()
    assert not await b.release()  # b never held it: a's lock survives
    assert await a.holder() == a.token
    assert await a.release()
    assert await a.holder() is None


async def test_expired_lock_cannot_delete_next_holders_lock(r: Any, uid: str) -> None:
    a = SessionLock(r, uid, ttl_s=0.3)
    assert await a.acquire()
    async with asyncio.timeout(5):  # the TTL itself is what is under test: wait for it
        while await r.exists(a.key):  # noqa: ASYNC110 - polling Redis is the observable state
            await asyncio.sleep(0.02)
    b = SessionLock(r, uid, ttl_s=5)
    assert await b.acquire()
    assert not await a.release()
    assert not await a.renew()  # a lost it: renewing must not steal it back
    assert await b.holder() == b.token


async def test_renew_extends_and_retakes_after_flush(r: Any, uid: str) -> None:
    a = SessionLock(r, uid, ttl_s=1)
    assert await a.acquire()
    assert await a.renew()
    assert 0 < await r.pttl(a.key) <= 1000
    await r.delete(a.key)  # what FLUSHALL or a Redis restart does to it
    assert await a.renew()
    assert await a.holder() == a.token


async def test_heartbeat_reports_loss(r: Any, uid: str) -> None:
    a = SessionLock(r, uid, ttl_s=3, heartbeat_s=0.05)
    assert await a.acquire()
    lost = asyncio.Event()
    async with a.heartbeat(on_lost=lost.set):
        await r.set(a.key, "someone-else")
        await asyncio.wait_for(lost.wait(), 5)
    assert a.lost
