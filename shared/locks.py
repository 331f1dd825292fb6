"""Per-session Redis lock: token-owned, TTL-bounded, heartbeated, released by token.

    lock = SessionLock(redis, session_id, ttl_s=30)
    if await lock.acquire():
        fence = ...                   # bump the session's fence in Postgres
        async with lock.heartbeat(on_lost=task.cancel, still_ours=fence_is_current):
            ...                       # run the session's turns
        await lock.release()

The lock only saves duplicate model calls; correctness comes from the fence that
the holder bumps in Postgres right after acquiring (I1).  The token is owned
explicitly (not per thread, unlike redis-py's ``Lock``) so the heartbeat task can
renew it, and release/renew are Lua compare-and-act scripts (never a blind DEL).

A key that vanished is taken back (``SET NX``) only while ``still_ours()`` says the
holder's fence is still the session's: after a Redis flush or restart nobody else
took over, so the holder carries on; after the key expired under a paused holder,
another worker may have, and then the stale holder stops at once instead of blocking
the session until its fenced write fails (docs/decisions/0006).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.keys import lock_key

log = logging.getLogger(__name__)

_LUA = Path(__file__).parent / "lua"
RELEASE = (_LUA / "lock_release.lua").read_text()
RENEW = (_LUA / "lock_renew.lua").read_text()


class SessionLock:
    def __init__(
        self, redis: aioredis.Redis, session_id: str, ttl_s: float, heartbeat_s: float | None = None
    ) -> None:
        self.redis = redis
        self.key = lock_key(session_id)
        self.token = secrets.token_hex(16)
        self.ttl_ms = int(ttl_s * 1000)
        self.heartbeat_s = heartbeat_s or ttl_s / 3
        self.lost = False

    async def acquire(self) -> bool:
        return bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def release(self) -> bool:
        try:
            return bool(await self.redis.eval(RELEASE, 1, self.key, self.token))
        except RedisError:
            log.warning("lock release failed; it expires by TTL", extra={"lock": self.key})
            return False

    async def renew(self, still_ours: Callable[[], Awaitable[bool]] | None = None) -> bool:
        """True while we hold the lock.  A vanished key is taken back only if
        ``still_ours()`` confirms nobody took the session over meanwhile."""
        result = int(await self.redis.eval(RENEW, 1, self.key, self.token, str(self.ttl_ms)))
        if result != 2:
            return result == 1
        if still_ours is None or not await still_ours():
            return False
        taken = await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms)
        if taken:
            log.info("session lock key had vanished; taken back", extra={"lock": self.key})
        return bool(taken)

    async def holder(self) -> str | None:
        value = await self.redis.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    @contextlib.asynccontextmanager
    async def heartbeat(
        self,
        on_lost: Callable[[], object] | None = None,
        still_ours: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[None]:
        # redis-py can swallow a cancellation that lands mid-command (the command just
        # completes), so the beat also stops on this flag: without it a beat that lost its
        # cancel renewed the lock forever and its drain waited for it forever.
        done = asyncio.Event()

        async def beat() -> None:
            while not done.is_set():
                await asyncio.sleep(self.heartbeat_s)
                if done.is_set():
                    return
                try:
                    held = await self.renew(still_ours)
                except RedisError:
                    # Redis is unreachable: keep going; if it stays away past the TTL
                    # someone else may take over and the fence refuses our write.
                    log.warning("lock heartbeat could not reach Redis", extra={"lock": self.key})
                    continue
                except Exception:
                    # The key vanished and Postgres cannot say whether the session is
                    # still ours: stop rather than run on a session someone else may own.
                    log.warning("lock heartbeat could not check the fence", exc_info=True)
                    held = False
                if not held and not done.is_set():
                    self.lost = True
                    log.warning("session lock lost to another worker", extra={"lock": self.key})
                    if on_lost is not None:
                        on_lost()
                    return

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            done.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
