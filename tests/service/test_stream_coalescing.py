"""The worker's Outbox against real Redis: text deltas coalesced, other events never delayed.

Each test writes one turn's events through ``workers.streaming.Outbox`` (the process's
``Publisher``) and reads them back as a reader does: the turn's stream and the text
streams it names, merged (``shared.turn_events.read_events``).  Only the runtime's
container is stood in (settings, a real Redis client, a real Publisher); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from shared.settings import Settings
from shared.turn_events import read_events
from workers.runtime import Runtime
from workers.streaming import Outbox, Publisher

pytestmark = [pytest.mark.service, pytest.mark.anyio]


@dataclass
class _Rt:
    publisher: Publisher


def outbox(r: aioredis.Redis, flush_ms: int = 50, flush_chars: int = 512) -> Outbox:
    settings = Settings(stream_flush_ms=flush_ms, stream_flush_chars=flush_chars)
    return Outbox(cast(Runtime, _Rt(Publisher(r, settings))), str(uuid.uuid4()))


async def entries(r: aioredis.Redis, box: Outbox) -> list[dict[str, str]]:
    return [fields for _, fields in await read_events(r, box.turn_id)]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["text"] for e in events if e["type"] == "delta")


def words(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [
        rng.choice(["héllo ", "wörld ", "€ ", "a", "\n", "δ ", "x" * 7 + " "]) for _ in range(n)
    ]


async def test_every_character_in_order_with_events_at_their_places(r: aioredis.Redis) -> None:
    box = outbox(r, flush_ms=20)
    expected: list[dict[str, Any]] = [{"type": "status", "status": "running"}]
    box.add(expected[0])
    for i, piece in enumerate(words(400)):
        box.add({"type": "delta", "text": piece})
        expected.append({"type": "delta", "text": piece})
        if i in (50, 51, 300):
            call = {"type": "tool_call", "call_id": f"c{i}", "name": "t", "arguments": "{}"}
            box.add(call)
            expected.append(call)
        if i % 7 == 0:
            await asyncio.sleep(0.003)  # tokens arrive over time, as from a model
    box.add({"type": "status", "status": "succeeded"})
    expected.append({"type": "status", "status": "succeeded"})
    await box.flushed()
    got = await entries(r, box)
    assert text_of(got) == text_of(expected)

    # the non-text events in order, each with exactly the text that came before it
    def cuts(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
        out, before = [], ""
        for e in events:
            if e["type"] == "delta":
                before += e["text"]
            else:
                out.append((e["type"] + e.get("call_id", "") + e.get("status", ""), before))
        return out

    assert cuts(got) == cuts(expected)
    assert len(got) < len(expected) / 3  # coalesced
    assert all(e["text"] for e in got if e["type"] == "delta")


async def test_at_most_one_entry_per_interval(r: aioredis.Redis) -> None:
    box = outbox(r, flush_ms=50)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for piece in words(150):  # ~1 s of tokens at ~150/s
        box.add({"type": "delta", "text": piece})
        await asyncio.sleep(1 / 150)
    await box.flushed()
    took = loop.time() - started
    got = await entries(r, box)
    assert len(got) <= took / 0.050 + 1
    assert text_of(got) == "".join(words(150))


async def test_a_long_burst_is_cut_at_the_character_limit(r: aioredis.Redis) -> None:
    box = outbox(r, flush_ms=10_000, flush_chars=100)
    for _ in range(30):
        box.add({"type": "delta", "text": "0123456789"})  # 300 characters at once
    await box.flushed()
    got = await entries(r, box)
    assert [len(e["text"]) for e in got] == [100, 100, 100]


async def test_flushed_sends_the_pending_text_without_waiting_for_the_timer(
    r: aioredis.Redis,
) -> None:
    box = outbox(r, flush_ms=60_000)
    box.add({"type": "delta", "text": "half a sent"})
    box.add({"type": "delta", "text": "ence"})
    assert await entries(r, box) == []  # held
    async with asyncio.timeout(5):
        await box.flushed()
    assert await entries(r, box) == [{"type": "delta", "text": "half a sentence"}]


async def test_other_events_go_at_once_after_the_pending_text(r: aioredis.Redis) -> None:
    box = outbox(r, flush_ms=60_000)
    box.add({"type": "delta", "text": "looking it up"})
    box.add({"type": "tool_call", "call_id": "c1", "name": "t", "arguments": "{}"})
    async with asyncio.timeout(5):
        while len(await entries(r, box)) < 2:  # noqa: ASYNC110 - the stream is the observable
            await asyncio.sleep(0.01)
    got = await entries(r, box)
    assert [e["type"] for e in got] == ["delta", "tool_call"]


async def test_zero_interval_keeps_one_entry_per_delta(r: aioredis.Redis) -> None:
    box = outbox(r, flush_ms=0)
    for piece in ["a ", "b ", "c"]:
        box.add({"type": "delta", "text": piece})
    await box.flushed()
    assert [e["text"] for e in await entries(r, box)] == ["a ", "b ", "c"]
