"""One blocking ``XREAD`` for every reader of a client process (decision 0011).

    async with hub.subscribe(keys.events_key(turn_id), last_id) as sub:
        entries = await sub.get(timeout=1.0)   # [(id, fields)] after last_id; [] when quiet

A reader blocking in its own ``XREAD`` cost a Redis connection and one command per
stream entry per reader: half the Redis commands of a streamed turn (B9).  Here one
task on one connection blocks on every subscribed stream at once, each at its
subscribers' last id, and hands each subscriber the entries after its own id, so two
readers of one turn (two browsers, a resume) each get the whole stream from where they
stand.  A new subscriber wakes a blocked read with an entry on the hub's private wake
stream, so its first entries do not wait for the block to time out.

Redis errors never reach subscribers: the hub logs, backs off and reads again on a new
connection, from the same ids (nothing is skipped).  A subscriber sees only quiet
(``[]``), which is when readers check Postgres, the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared import keys

log = logging.getLogger(__name__)

BLOCK_MS = 1000  # a read with nothing to return ends this often (and drops gone readers)
COUNT = 100  # entries per stream per read
BACKOFF_S = (0.1, 0.25, 0.5, 1.0)  # after consecutive Redis errors

Entry = tuple[str, dict[str, str]]


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(eq=False)
class Subscription:
    """One reader of one stream: the hub puts each batch of its new entries on ``queue``."""

    key: str
    last: tuple[int, int]  # the id of the last entry handed over
    queue: asyncio.Queue[list[Entry]] = field(default_factory=asyncio.Queue)

    async def get(self, timeout: float) -> list[Entry]:  # noqa: ASYNC109 - a quiet reader checks Postgres
        """The next entries, oldest first; [] if none came within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                return await self.queue.get()
        except TimeoutError:
            return []


class StreamHub:
    """Reads every subscribed stream of one client with one connection and one command.

    ``gather_ms``: after a read that returned entries, wait this long before the next one
    when several streams are subscribed, so one read returns the entries of many streams.
    """

    def __init__(self, redis: aioredis.Redis, namespace: str, gather_ms: int = 0) -> None:
        pool = redis.connection_pool
        self._wake_client = redis  # the callers' pool: the hub's own connection is blocked
        self._redis = aioredis.Redis(  # one connection of its own, never the callers' pool
            connection_pool=type(pool)(
                connection_class=pool.connection_class,
                max_connections=1,
                **pool.connection_kwargs,
            )
        )
        self._wake_key = keys.reader_wake_key(secrets.token_hex(8), namespace)
        self._wake_id = "0-0"
        self._gather_s = gather_ms / 1000
        self._subs: dict[str, set[Subscription]] = {}
        self._added = asyncio.Event()
        self._blocked = False  # a read is in flight; a new key needs a wake
        self._woken = False  # ... and one wake was already sent for it
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def subscriptions(self) -> int:
        return sum(len(subs) for subs in self._subs.values())

    @contextlib.asynccontextmanager
    async def subscribe(self, key: str, last_id: str) -> AsyncIterator[Subscription]:
        """Entries of ``key`` after ``last_id`` until the block exits (a cancelled reader
        unsubscribes too)."""
        sub = Subscription(key, _id(last_id))
        self._subs.setdefault(key, set()).add(sub)
        try:
            self._start()
            self._added.set()
            if self._blocked and not self._woken:
                self._woken = True
                await self._wake()
            yield sub
        finally:
            subs = self._subs.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[key]

    async def aclose(self) -> None:
        """Stop reading; idempotent.  The flag as well as the cancel: a cancel that lands in
        redis-py's read can be swallowed there, and the loop must still end."""
        self._closing = True
        self._added.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="turnq-hub")

    async def _wake(self) -> None:
        """An entry on the wake stream ends the hub's blocked read (it always reads it)."""
        try:
            async with self._wake_client.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.expire(self._wake_key, keys.READER_WAKE_TTL_S)
                await pipe.execute()
        except (RedisError, OSError):
            log.warning("reader wake not sent; the hub's read ends within a second")

    async def _run(self) -> None:
        errors = 0
        while not self._closing:
            if not self._subs:
                self._added.clear()
                await self._added.wait()
                continue
            streams = {key: self._from(subs) for key, subs in self._subs.items()}
            streams[self._wake_key] = self._wake_id
            self._blocked, self._woken = True, False
            try:
                got: Any = await self._redis.xread(streams, count=COUNT, block=BLOCK_MS)  # type: ignore[arg-type]
            except (RedisError, OSError) as exc:
                log.warning("stream hub read failed (%s); reading again", type(exc).__name__)
                await asyncio.sleep(BACKOFF_S[min(errors, len(BACKOFF_S) - 1)])
                errors += 1
                continue
            finally:
                self._blocked = False
            errors = 0
            delivered = self._dispatch(got or [])
            if delivered and self._gather_s and len(self._subs) > 1:
                await asyncio.sleep(self._gather_s)

    @staticmethod
    def _from(subs: set[Subscription]) -> str:
        ms, seq = min(sub.last for sub in subs)
        return f"{ms}-{seq}"

    def _dispatch(self, got: list[Any]) -> bool:
        delivered = False
        for stream, batch in got:
            key = _s(stream)
            if key == self._wake_key:
                self._wake_id = _s(batch[-1][0])
                continue
            entries = [(_s(i), {_s(k): _s(v) for k, v in f.items()}) for i, f in batch]
            for sub in self._subs.get(key, ()):
                new = [e for e in entries if _id(e[0]) > sub.last]
                if new:
                    sub.last = _id(new[-1][0])
                    sub.queue.put_nowait(new)
                    delivered = True
        return delivered
