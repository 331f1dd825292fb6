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

A kick that finds the lock held marks the session "kicked while held" in the same atomic
step (``lock_acquire.lua``); ``release`` takes the mark with the lock, and ``quiet`` says
that no kick can have come since the holder last looked in Postgres, so the drain can
skip looking again (docs/decisions/0012).

A holder takes a turn (its first claim, and the next claim that comes with each commit)
only while ``still_held()``: Redis confirmed the lock less than ``ttl - heartbeat``
ago, or confirms it now.  A worker that wakes from a pause past the TTL runs its overdue
callbacks in any order; a commit that came before its heartbeat used to claim the next
turn under an expired lock, and a new holder took that turn over at once (a re-run no
fault explains; found by tests/chaos/test_attempts_under_faults.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from shared.keys import lock_key

log = logging.getLogger(__name__)

_LUA = Path(__file__).parent / "lua"


class Script:
    """A Lua script run by its SHA1 (``EVALSHA``: Redis neither receives nor hashes the
    text on every call), loaded into a server the first time it does not know it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, redis: aioredis.Redis, keys: list[str], *args: str | int) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a new or restarted server
            await redis.script_load(self.text)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


ACQUIRE = Script((_LUA / "lock_acquire.lua").read_text())
RELEASE = Script((_LUA / "lock_release.lua").read_text())
RENEW = Script((_LUA / "lock_renew.lua").read_text())


class SessionLock:
    def __init__(
        self, redis: aioredis.Redis, session_id: str, ttl_s: float, heartbeat_s: float | None = None
    ) -> None:
        self.redis = redis
        self.key = lock_key(session_id)
        self._keys = [self.key]
        self.token = secrets.token_hex(16)
        self.ttl_ms = int(ttl_s * 1000)
        self.heartbeat_s = heartbeat_s or ttl_s / 3
        self.lost = False
        # the key was taken back after it vanished: a mark set before that is gone with it
        self.retaken = False
        # released by us with no kick marked meanwhile (see ``release``)
        self.quiet = False
        # time.monotonic() when a command that Redis then confirmed (acquire, renew) was
        # sent: the key lives at least ttl after it
        self.confirmed_at = -float("inf")

    async def acquire(self) -> bool:
        """Take the lock; if another holds it, mark the session kicked for that holder."""
        sent = time.monotonic()
        taken = bool(await ACQUIRE(self.redis, self._keys, self.token, self.ttl_ms))
        if taken:
            self.confirmed_at = sent
        return taken

    async def release(self) -> bool:
        """Delete the lock if it is still ours.  ``quiet`` then says whether no kick found it
        held since it was taken (a mark lost with a vanished key does not count as quiet)."""
        self.quiet = False
        try:
            released, kicked = await RELEASE(self.redis, self._keys, self.token)
        except RedisError:
            log.warning("lock release failed; it expires by TTL", extra={"lock": self.key})
            return False
        self.quiet = bool(released) and not kicked and not self.retaken
        return bool(released)

    async def renew(self, still_ours: Callable[[], Awaitable[bool]] | None = None) -> bool:
        """True while we hold the lock.  A vanished key is taken back only if
        ``still_ours()`` confirms nobody took the session over meanwhile."""
        sent = time.monotonic()
        result = int(await RENEW(self.redis, self._keys, self.token, self.ttl_ms))
        if result != 2:
            if result == 1:
                self.confirmed_at = sent
            return result == 1
        if still_ours is None or not await still_ours():
            return False
        sent = time.monotonic()
        taken = await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms)
        if taken:
            self.confirmed_at = sent
            self.retaken = True
            log.info("session lock key had vanished; taken back", extra={"lock": self.key})
        return bool(taken)

    def fresh(self) -> bool:
        """Redis confirmed the lock recently: it holds for a heartbeat interval more."""
        return time.monotonic() < self.confirmed_at + self.ttl_ms / 1000 - self.heartbeat_s

    async def still_held(self) -> bool:
        """Safe to take a turn: the lock is fresh, or Redis confirms our token now (a
        vanished key is not taken back here: the heartbeat decides that, with the fence)."""
        if self.fresh():
            return True
        try:
            return await self.renew()
        except RedisError:
            return False

    async def holder(self) -> str | None:
        """The holder's token (without a kick's mark)."""
        value = await self.redis.get(self.key)
        token = value.decode() if isinstance(value, bytes) else value
        return token.removesuffix("+") if token is not None else None

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
