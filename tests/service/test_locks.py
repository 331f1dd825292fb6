"""SessionLock against real Redis: token-owned, renew/release by token, re-taken after a flush."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.locks import SessionLock
from tests.support.servers import PrivateRedis

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

    async def fence_still_current() -> bool:
        return True

    assert await a.renew(fence_still_current)
    assert await a.holder() == a.token
    assert 0 < await r.pttl(a.key) <= 1000


async def test_a_vanished_key_is_not_taken_back_once_the_session_moved_on(r: Any, uid: str) -> None:
    """The key expired under a paused holder and another worker took the session over
    (its fence moved), or nobody can tell: the stale holder must stop, not re-create it."""
    a = SessionLock(r, uid, ttl_s=1)
    assert await a.acquire()
    await r.delete(a.key)

    async def fence_moved() -> bool:
        return False

    assert not await a.renew(fence_moved)
    assert not await a.renew()  # no way to check: never taken back blindly
    assert await a.holder() is None
    b = SessionLock(r, uid, ttl_s=5)
    assert await b.acquire()  # the session is free for the next holder


async def test_take_back_loses_to_a_holder_that_got_there_first(r: Any, uid: str) -> None:
    """The fence check and the SET NX are two steps: if another worker took the key in
    between, SET NX fails and the old holder stops."""
    a, b = SessionLock(r, uid, ttl_s=5), SessionLock(r, uid, ttl_s=5)
    assert await a.acquire()
    await r.delete(a.key)

    async def b_wins_meanwhile() -> bool:
        assert await b.acquire()
        return True  # the fence still looked current when a checked it

    assert not await a.renew(b_wins_meanwhile)
    assert await b.holder() == b.token


async def test_heartbeat_stops_when_postgres_cannot_confirm_the_fence(r: Any, uid: str) -> None:
    a = SessionLock(r, uid, ttl_s=3, heartbeat_s=0.05)
    assert await a.acquire()
    lost = asyncio.Event()

    async def postgres_down() -> bool:
        raise OSError("connection refused")

    async with a.heartbeat(on_lost=lost.set, still_ours=postgres_down):
        await r.delete(a.key)
        await asyncio.wait_for(lost.wait(), 5)
    assert a.lost and await a.holder() is None


async def test_heartbeat_reports_loss(r: Any, uid: str) -> None:
    a = SessionLock(r, uid, ttl_s=3, heartbeat_s=0.05)
    assert await a.acquire()
    lost = asyncio.Event()
    async with a.heartbeat(on_lost=lost.set):
        await r.set(a.key, "someone-else")
        await asyncio.wait_for(lost.wait(), 5)
    assert a.lost


async def test_a_kick_that_finds_the_lock_held_marks_it_for_the_holders_release(
    r: Any, uid: str
) -> None:
    holder, kick = SessionLock(r, uid, ttl_s=5), SessionLock(r, uid, ttl_s=5)
    assert await holder.acquire()
    assert await r.get(holder.key) == holder.token.encode()  # nobody knocked yet
    assert not await kick.acquire()
    assert not await kick.acquire()  # a second kick marks it the same way
    assert await r.get(holder.key) == f"{holder.token}+".encode()
    assert 4000 < await r.pttl(holder.key) <= 5000  # the mark keeps the holder's TTL
    assert await holder.holder() == holder.token
    assert not await kick.release() and not kick.quiet  # not its lock: untouched
    assert await holder.renew()  # a marked lock is still ours
    assert await holder.release()
    assert not holder.quiet  # the holder learns of the kick
    assert await r.exists(holder.key) == 0
    again = SessionLock(r, uid, ttl_s=5)
    assert await again.acquire()
    assert await again.release() and again.quiet  # no kick this time


async def test_a_release_after_the_key_was_taken_back_is_never_quiet(r: Any, uid: str) -> None:
    """A flush lost the lock and its mark: a kick may have come and gone unmarked."""
    holder, kick = SessionLock(r, uid, ttl_s=5), SessionLock(r, uid, ttl_s=5)
    assert await holder.acquire()
    assert not await kick.acquire()
    await r.delete(holder.key)  # what FLUSHALL does to it

    async def fence_still_current() -> bool:
        return True

    assert await holder.renew(fence_still_current)
    assert await holder.release()
    assert not holder.quiet


async def test_the_lock_scripts_are_loaded_again_into_a_server_that_forgot_them(uid: str) -> None:
    """Scripts run by SHA; a restarted Redis (or SCRIPT FLUSH) no longer knows them."""
    with PrivateRedis() as server:
        r = aioredis.Redis.from_url(server.url)
        try:
            a = SessionLock(r, uid, ttl_s=5)
            assert await a.acquire()
            await r.script_flush()
            assert await a.renew()
            await r.script_flush()
            assert await a.release() and a.quiet
        finally:
            await r.aclose()
