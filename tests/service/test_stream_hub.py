"""The client's stream hub (producer.streams) against real Redis: one XREAD for every reader.

Writers XADD to turn streams as the worker does; readers subscribe through one hub and
must get exactly their stream's entries after their own id, in order, however many
readers share a stream or the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import pytest
import redis.asyncio as aioredis

from producer import streams
from producer.streams import Entry, StreamHub
from tests.conftest import NAMESPACE
from tests.support.servers import PrivateRedis

pytestmark = [pytest.mark.service, pytest.mark.anyio]

END = {"type": "status", "status": "succeeded"}


async def read_to_end(hub: StreamHub, key: str, last: str = "0-0") -> list[Entry]:
    got: list[Entry] = []
    async with hub.subscribe(key, last) as sub:
        while not got or got[-1][1] != END:
            batch = await sub.get(30)
            assert batch, f"{key}: nothing for 30 s after {got[-1:] or last}"
            got.extend(batch)
    return got


async def xrange(r: aioredis.Redis, key: str, after: str = "0-0") -> list[Entry]:
    """What a reader after ``after`` must get: the stream itself, read directly."""
    return list(await r.xrange(key, min="-" if after == "0-0" else f"({after}"))


async def blocked(hub: StreamHub) -> None:
    async with asyncio.timeout(10):
        while not hub._blocked:  # noqa: ASYNC110 - observable state
            await asyncio.sleep(0.005)


async def test_many_readers_on_many_streams_get_exactly_theirs_in_order(
    r: aioredis.Redis, hub: StreamHub, uid: str
) -> None:
    streams_ = [f"{NAMESPACE}hub{uid}:s{i}" for i in range(30)]
    readers = [
        asyncio.create_task(read_to_end(hub, key)) for key in streams_ for _ in range(2)
    ]  # two readers on every stream (two browsers on one turn)
    rng = random.Random(7)
    order = [key for key in streams_ for _ in range(40)]
    rng.shuffle(order)
    for n, key in enumerate(order):
        await r.xadd(key, {"type": "delta", "text": f"{key}#{n}"})
        if n % 50 == 0:
            await asyncio.sleep(0.01)  # entries arrive over time, some while the hub blocks
    for key in streams_:
        await r.xadd(key, END)
    async with asyncio.timeout(60):
        got = await asyncio.gather(*readers)
    for i, key in enumerate(streams_):
        expected = await xrange(r, key)
        assert len(expected) == 41
        assert got[2 * i] == expected
        assert got[2 * i + 1] == expected
    assert hub.subscriptions == 0
    await r.delete(*streams_)


async def test_resume_from_any_id_mid_stream(r: aioredis.Redis, hub: StreamHub, uid: str) -> None:
    key = f"{NAMESPACE}hub{uid}:resume"
    for n in range(250):  # more than one read's COUNT
        await r.xadd(key, {"type": "delta", "text": str(n)})
    await r.xadd(key, END)
    everything = await xrange(r, key)
    marks = ["0-0", *(everything[i][0] for i in (0, 1, 99, 100, 170, 249))]
    async with asyncio.timeout(30):  # all at once: one stream, readers at different ids
        got = await asyncio.gather(*(read_to_end(hub, key, mark) for mark in marks))
    for mark, entries in zip(marks, got, strict=True):
        assert entries == await xrange(r, key, mark)
    await r.delete(key)


async def test_a_new_reader_does_not_wait_for_the_blocked_read(
    r: aioredis.Redis, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "BLOCK_MS", 8000)
    hub = StreamHub(r, f"{NAMESPACE}hub{uid}:")  # r has no socket timeout
    quiet, late = f"{NAMESPACE}hub{uid}:quiet", f"{NAMESPACE}hub{uid}:late"
    try:
        async with hub.subscribe(quiet, "0-0") as waiting:
            await blocked(hub)  # an 8 s read on the quiet stream only
            await r.xadd(late, {"type": "status", "status": "running"})
            started = time.monotonic()
            async with hub.subscribe(late, "0-0") as sub:
                first = await sub.get(8)
                assert first, "the new reader got nothing"
                assert time.monotonic() - started < 4.0, "it waited for the blocked read"
                await blocked(hub)  # blocked again, on both streams now
                await r.xadd(late, END)
                assert [f for _, f in await sub.get(4)] == [END]
            assert await waiting.get(0.01) == []
    finally:
        await hub.aclose()
        await r.delete(late)


async def test_a_cancelled_reader_unsubscribes(r: aioredis.Redis, hub: StreamHub, uid: str) -> None:
    keys_ = [f"{NAMESPACE}hub{uid}:c{i % 7}" for i in range(40)]

    async def reader(key: str) -> None:
        async with hub.subscribe(key, "0-0") as sub:
            while True:
                await sub.get(1)

    tasks = [asyncio.create_task(reader(key)) for key in keys_]
    async with asyncio.timeout(10):
        while hub.subscriptions < len(keys_):  # noqa: ASYNC110 - observable state
            await asyncio.sleep(0.01)
    await blocked(hub)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    assert hub.subscriptions == 0
    assert hub._subs == {}


async def test_the_hub_survives_its_redis_restarting(uid: str) -> None:
    with PrivateRedis() as server:
        r = aioredis.Redis.from_url(server.url, decode_responses=True)
        hub = StreamHub(r, f"hub{uid}:")
        key = f"hub{uid}:survivor"
        try:
            async with hub.subscribe(key, "0-0") as sub:
                await r.xadd(key, {"n": "1"})
                assert [f for _, f in await sub.get(10)] == [{"n": "1"}]
                await blocked(hub)
                server.restart(kill=True)  # the hub's connection dies mid-read
                assert await sub.get(1.5) == []  # subscribers see quiet, never the error
                await r.xadd(key, {"n": "2"})  # a fresh, empty server
                async with asyncio.timeout(15):
                    got = await sub.get(15)
                assert [f for _, f in got] == [{"n": "2"}]
                assert hub._task is not None and not hub._task.done()
        finally:
            await hub.aclose()
            await r.aclose()
        assert hub._task is None
