"""Many turns' text through one worker process's text stream, read by one hub (decision 0014).

A real Publisher (the worker's side) writes the events of many turns at once; a real
StreamHub (the client's side) follows each turn with a reader.  Each reader must get its
own turn's events, every character once, in the order written, tool events at their
places, and nothing of another turn; a reader that resumes after any id, while the turn
still runs or after it ended, must get exactly the rest.  And the text of all the turns
must have gone out in one XADD per flush, not one per turn.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from producer.streams import Entry, StreamHub
from shared import keys
from shared.settings import Settings
from workers.streaming import Publisher

pytestmark = [pytest.mark.service, pytest.mark.anyio]

END = {"type": "status", "status": "succeeded"}


async def write_turn(pub: Publisher, turn: str, tokens: int, rng: random.Random) -> list[Any]:
    """One turn as a worker streams it; returns what it wrote, in order."""
    wrote: list[Any] = []

    def add(event: dict[str, str]) -> None:
        wrote.append(event)
        if event["type"] == "delta":
            pub.text(turn, event["text"])
        else:
            pub.event(turn, event)

    add({"type": "status", "status": "running"})
    for i in range(tokens):
        add({"type": "delta", "text": f"{turn[:4]}:{i} "})
        if rng.random() < 0.01:
            add({"type": "tool_call", "call_id": f"c{i}", "name": "t", "arguments": "{}"})
        await asyncio.sleep(rng.uniform(0, 0.006))
    add(END)
    await pub.flush(turn)
    return wrote


async def follow(hub: StreamHub, turn: str, after: str = "0-0") -> list[Entry]:
    got: list[Entry] = []
    async with hub.subscribe(keys.events_key(turn), after, turn=turn) as sub:
        while not got or got[-1][1] != END:
            batch = await sub.get(30)
            assert batch, f"{turn}: nothing for 30 s after {got[-1:] or after}"
            got.extend(batch)
    return got


def joined(events: list[Any]) -> list[Any]:
    """Consecutive text joined: what coalescing may change, and nothing else."""
    out: list[Any] = []
    for e in events:
        if e["type"] == "delta" and out and out[-1]["type"] == "delta":
            out[-1] = {"type": "delta", "text": out[-1]["text"] + e["text"]}
        else:
            out.append(dict(e))
    return out


async def test_every_turn_gets_its_own_events_in_order_from_one_text_stream(
    r: aioredis.Redis, hub: StreamHub
) -> None:
    pub = Publisher(r, Settings(stream_flush_ms=50))
    turns = [str(uuid.uuid4()) for _ in range(30)]
    readers = [asyncio.create_task(follow(hub, t)) for t in turns]
    rng = random.Random(7)
    started = asyncio.get_running_loop().time()
    wrote = await asyncio.gather(*(write_turn(pub, t, 150, rng) for t in turns))
    took = asyncio.get_running_loop().time() - started
    got = await asyncio.gather(*readers)
    for turn, events, entries in zip(turns, wrote, got, strict=True):
        assert joined([f for _, f in entries]) == joined(events), turn
        assert all(turn[:4] in f["text"] for _, f in entries if f["type"] == "delta")
        ids = [i for i, _ in entries]
        assert len(set(ids)) == len(ids)
    # One XADD per flush interval for every turn's text, plus one before a turn's other
    # event (its text goes first); not one per turn and interval.
    flushes = await r.xlen(pub.key)
    others = sum(1 for events in wrote for e in events if e["type"] != "delta")
    chunks = sum(sum(1 for _, f in entries if f["type"] == "delta") for entries in got)
    assert flushes <= took / 0.050 + 1 + others, (flushes, took, others)
    assert flushes < chunks / 3, (flushes, chunks)
    assert await r.ttl(pub.key) > 0


async def test_a_reader_resumes_after_any_id_while_the_turn_runs_and_after(
    r: aioredis.Redis, hub: StreamHub
) -> None:
    pub = Publisher(r, Settings(stream_flush_ms=20))
    turn, other = str(uuid.uuid4()), str(uuid.uuid4())
    first = asyncio.create_task(follow(hub, turn))
    resumed: list[tuple[str, asyncio.Task[list[Entry]]]] = []

    async def resume_midway() -> None:  # readers that come back while the turn runs
        seen: list[str] = []
        async with hub.subscribe(keys.events_key(turn), "0-0", turn=turn) as sub:
            while len(resumed) < 6:
                seen += [i for i, _ in await sub.get(30)]
                if len(seen) > 3 * len(resumed) + 2:
                    after = seen[-1] if len(resumed) % 2 else seen[-2]
                    resumed.append((after, asyncio.create_task(follow(hub, turn, after))))

    midway = asyncio.create_task(resume_midway())
    rng = random.Random(3)
    await asyncio.gather(write_turn(pub, turn, 200, rng), write_turn(pub, other, 200, rng))
    await midway
    everything = await first
    ids = [i for i, _ in everything]
    for after, task in resumed:
        assert await task == everything[ids.index(after) + 1 :], after
    for k in range(0, len(ids) - 1, max(1, len(ids) // 15)):  # after the end, from anywhere
        assert await follow(hub, turn, ids[k]) == everything[k + 1 :], ids[k]
