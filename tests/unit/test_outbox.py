"""A turn's outbox holds a guarded agent's events until its output passed (workers/streaming.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from workers.streaming import Outbox


class _Pipe:
    def __init__(self, sent: list[dict[str, Any]]) -> None:
        self.sent = sent

    async def __aenter__(self) -> _Pipe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def xadd(self, key: str, fields: dict[str, Any], **kw: Any) -> None:
        self.sent.append(fields)

    def expire(self, key: str, seconds: int) -> None:
        pass

    async def execute(self) -> None:
        pass


def _outbox() -> tuple[Outbox, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    redis = SimpleNamespace(pipeline=lambda transaction: _Pipe(sent))
    rt: Any = SimpleNamespace(
        redis=redis,
        settings=SimpleNamespace(events_ttl_s=60, stream_flush_ms=0, stream_flush_chars=512),
    )
    return Outbox(rt, "t1"), sent


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
