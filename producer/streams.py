"""One blocking ``XREAD`` for every reader of a client process (decision 0011).

    async with hub.subscribe(keys.events_key(turn_id), last_id, turn=turn_id) as sub:
        entries = await sub.get(timeout=1.0)   # [(id, fields)] after last_id; [] when quiet

With ``turn``, a subscriber gets the turn's events with its text, which its workers
write to their text streams (decision 0014, ``shared.turn_events``): the hub reads the
turn's stream from its start (a few entries: where the text is), follows the text
streams its entries name, and hands over entries and text chunks merged in order.
Without it (``client.wait``), only the turn's own entries: statuses and the like.

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

from shared import keys, turn_events
from shared.turn_events import Merger, decode

log = logging.getLogger(__name__)

BLOCK_MS = 1000  # a read with nothing to return ends this often (and drops gone readers)
COUNT = 100  # entries per stream per read
BACKOFF_S = (0.1, 0.25, 0.5, 1.0)  # after consecutive Redis errors

Entry = tuple[str, dict[str, str]]


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(eq=False)
class Subscription:
    """One reader of one stream: the hub puts each batch of its new entries on ``queue``."""

    key: str
    last: tuple[int, int]  # the stream read so far for this reader
    turn: str | None = None  # follow this turn's text (its field in text streams)
    merger: Merger | None = None
    texts: dict[str, tuple[int, int]] = field(default_factory=dict)  # text stream: read so far
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
        self._texts: dict[str, set[Subscription]] = {}  # text stream: the turns' readers
        self._cycle = 0  # reads so far
        self._read: dict[str, tuple[int, int]] = {}  # the last read: stream -> after id
        self._sync = False  # readers wait on a text stream's end: read without blocking
        self._added = asyncio.Event()
        self._blocked = False  # a read is in flight; a new key needs a wake
        self._woken = False  # ... and one wake was already sent for it
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def subscriptions(self) -> int:
        return sum(len(subs) for subs in self._subs.values())

    @contextlib.asynccontextmanager
    async def subscribe(
        self, key: str, last_id: str, turn: str | None = None
    ) -> AsyncIterator[Subscription]:
        """Entries of ``key`` after ``last_id`` until the block exits (a cancelled reader
        unsubscribes too); with ``turn``, the turn's events with its text, after the event
        id ``last_id``."""
        if turn is None:
            sub = Subscription(key, _id(last_id))
        else:
            sub = Subscription(key, (0, 0), turn, Merger(turn_events.pos_of(last_id)))
        self._subs.setdefault(key, set()).add(sub)
        try:
            self._start()
            self._added.set()
            if self._blocked and not self._woken:
                self._woken = True
                await self._wake()
            yield sub
        finally:
            for table, stream in ((self._subs, key), *((self._texts, t) for t in sub.texts)):
                subs = table.get(stream)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del table[stream]

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
            texts = {key: self._text_from(key, subs) for key, subs in self._texts.items()}
            streams |= texts
            streams[self._wake_key] = self._wake_id
            sync, self._sync = self._sync, False
            self._blocked, self._woken = not sync, False
            try:
                got: Any = await self._redis.xread(
                    streams,  # type: ignore[arg-type]
                    count=COUNT,
                    block=None if sync else BLOCK_MS,
                )
            except (RedisError, OSError) as exc:
                log.warning("stream hub read failed (%s); reading again", type(exc).__name__)
                await asyncio.sleep(BACKOFF_S[min(errors, len(BACKOFF_S) - 1)])
                errors += 1
                self._sync = sync
                continue
            finally:
                self._blocked = False
            errors = 0
            self._cycle += 1
            delivered = self._dispatch(got or [], streams, sync)
            if delivered and self._gather_s and len(self._subs) > 1 and not self._sync:
                await asyncio.sleep(self._gather_s)

    @staticmethod
    def _from(subs: set[Subscription]) -> str:
        ms, seq = min(sub.last for sub in subs)
        return f"{ms}-{seq}"

    @staticmethod
    def _text_from(key: str, subs: set[Subscription]) -> str:
        ms, seq = min(sub.texts[key] for sub in subs)
        return f"{ms}-{seq}"

    def _dispatch(self, got: list[Any], read: dict[str, str], sync: bool) -> bool:
        """Hand each subscriber its new entries.  ``read``: the streams read, each after
        an id; a subscriber behind that id (it came during the read) waits for the next.
        ``sync``: the read did not block, so a stream returned whole (under COUNT) or not
        at all was read to its end."""
        self._read = {key: _id(after) for key, after in read.items()}
        delivered = False
        merging: set[Subscription] = set()
        ends = set(read) if sync else set()
        for stream, batch in got:
            key = decode(stream)
            if key == self._wake_key:
                self._wake_id = decode(batch[-1][0])
                continue
            entries = [(decode(i), {decode(k): decode(v) for k, v in f.items()}) for i, f in batch]
            if len(batch) >= COUNT:
                ends.discard(key)
            delivered |= self._take_entries(key, entries, merging)
            self._take_text(key, entries, merging)
        for key in ends:
            for sub in self._texts.get(key, ()):
                if sub.merger is not None and self._covers(key, sub.texts[key]):
                    sub.merger.complete(key, self._cycle)
                    merging.add(sub)
        for sub in merging:
            assert sub.merger is not None
            ready = sub.merger.ready()
            if ready:
                sub.queue.put_nowait(ready)
                delivered = True
            if sub.merger.waiting:
                self._sync = True
        return delivered

    def _covers(self, key: str, last: tuple[int, int]) -> bool:
        """The read returned every entry of ``key`` after ``last`` (up to COUNT)."""
        after = self._read.get(key)
        return after is not None and after <= last

    def _take_entries(self, key: str, entries: list[Entry], merging: set[Subscription]) -> bool:
        """A turn's own entries: to plain readers as they are, to turns' readers' mergers."""
        delivered = False
        for sub in self._subs.get(key, ()):
            if not self._covers(key, sub.last):
                continue
            new = [e for e in entries if _id(e[0]) > sub.last]
            if not new:
                continue
            sub.last = _id(new[-1][0])
            if sub.merger is None:
                sub.queue.put_nowait([(i, turn_events.public(f)) for i, f in new])
                delivered = True
                continue
            merging.add(sub)
            for entry_id, fields in new:
                route = sub.merger.entry(entry_id, fields, self._cycle)
                if route is not None and route[0] not in sub.texts:
                    sub.texts[route[0]] = _id(route[1])
                    self._texts.setdefault(route[0], set()).add(sub)
        return delivered

    def _take_text(self, key: str, entries: list[Entry], merging: set[Subscription]) -> None:
        """A worker's text stream: each reader's turn's chunks to its merger."""
        for sub in self._texts.get(key, ()):
            if not self._covers(key, sub.texts[key]):
                continue
            new = [e for e in entries if _id(e[0]) > sub.texts[key]]
            if new and sub.merger is not None and sub.turn is not None:
                sub.texts[key] = _id(new[-1][0])
                merging.add(sub)
                for _, fields in new:
                    sub.merger.chunk(fields.get(sub.turn))
