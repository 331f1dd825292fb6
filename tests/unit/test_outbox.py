"""A turn's outbox holds a guarded agent's events until its output passed (workers/streaming.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from shared.turn_events import read_events
from workers.streaming import Outbox, Publisher


class _Redis:
    """Streams in memory: just what a Publisher writes and read_events reads."""

    def __init__(self) -> None:
        self.streams: dict[str, list[tuple[str, dict[str, str]]]] = {}
        self.ids = 0

    def pipeline(self, transaction: bool) -> _Pipe:
        return _Pipe(self)

    async def xrange(self, key: str, min: str = "-") -> list[tuple[str, dict[str, str]]]:
        start = (0, 0) if min == "-" else tuple(int(x) for x in min.split("-"))
        return [(i, f) for i, f in self.streams.get(key, []) if _pos(i) >= start]


def _pos(entry_id: str) -> tuple[int, ...]:
    return tuple(int(x) for x in entry_id.split("-"))


class _Pipe:
    def __init__(self, redis: _Redis) -> None:
        self.redis = redis
        self.calls: list[Any] = []

    async def __aenter__(self) -> _Pipe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def xadd(self, key: str, fields: dict[str, str], **kw: Any) -> None:
        self.calls.append((key, fields))

    def expire(self, key: str, seconds: int) -> None:
        self.calls.append(None)

    async def execute(self) -> list[Any]:
        out: list[Any] = []
        for call in self.calls:
            if call is None:
                out.append(True)
                continue
            self.redis.ids += 1
            entry_id = f"{self.redis.ids}-0"
            self.redis.streams.setdefault(call[0], []).append((entry_id, call[1]))
            out.append(entry_id)
        return out


def _outbox() -> tuple[Outbox, list[dict[str, Any]]]:
    redis = _Redis()
    settings: Any = SimpleNamespace(events_ttl_s=60, stream_flush_ms=0, stream_flush_chars=512)
    rt: Any = SimpleNamespace(publisher=Publisher(cast(Any, redis), settings))
    sent: list[dict[str, Any]] = []
    box = Outbox(rt, "t1")
    real_flushed = box.flushed

    async def flushed() -> None:  # what a reader sees now, after each flush
        await real_flushed()
        sent[:] = [f for _, f in await read_events(cast(Any, redis), "t1")]

    box.flushed = flushed  # type: ignore[method-assign]
    return box, sent


def _types(sent: list[dict[str, Any]]) -> list[str]:
    return [f"{e['type']}:{e.get('text') or e.get('status') or e.get('attempt')}" for e in sent]


def test_held_events_go_out_in_order_once_released_and_statuses_never_wait() -> None:
    async def run() -> list[dict[str, Any]]:
        outbox, sent = _outbox()
        outbox.add({"type": "status", "status": "running"})
        outbox.hold()
        outbox.add({"type": "delta", "text": "par"})
        outbox.add({"type": "retry", "attempt": "1", "discard": "true"})  # from the model layer
        outbox.add({"type": "delta", "text": "full"})
        await outbox.flushed()
        assert _types(sent) == ["status:running"]
        outbox.release()
        outbox.add({"type": "status", "status": "succeeded"})
        await outbox.flushed()
        return sent

    sent = asyncio.run(run())
    assert _types(sent) == [
        "status:running", "delta:par", "retry:1", "delta:full", "status:succeeded",
    ]  # fmt: skip


def test_dropped_events_never_go_out() -> None:
    async def run() -> list[dict[str, Any]]:
        outbox, sent = _outbox()
        outbox.hold()
        outbox.add({"type": "delta", "text": "the SECRET"})
        outbox.drop()
        outbox.add({"type": "status", "status": "failed"})
        await outbox.flushed()
        return sent

    assert _types(asyncio.run(run())) == ["status:failed"]
