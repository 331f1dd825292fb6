"""``request_compaction``: one pending request per session, and a lost one is asked again.

A summarizer killed after receiving a compaction message but before starting it leaves
the message unacked (back only after ``visibility_timeout``) and the session's pending
mark set: the reaper, seeing an empty summarize queue, must ask again once the mark is
older than ``reaper_stale_s`` (found by tests/chaos/test_summarizer_crash.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared import keys
from shared.settings import get_settings
from workers.compact import request_compaction

pytestmark = [pytest.mark.service, pytest.mark.anyio]


class FakeRuntime(SimpleNamespace):
    """What request_compaction uses of a Runtime: real Redis, settings, a recorded kick."""

    kicks: list[tuple[str, str]]

    async def kick(self, task: str, session_id: str) -> bool:
        self.kicks.append((task, session_id))
        return True


@pytest.fixture
async def rt(stack_env: dict[str, str]) -> AsyncIterator[Any]:
    settings = get_settings()
    redis = aioredis.Redis.from_url(settings.require_redis_url())
    yield FakeRuntime(redis=redis, settings=settings, kicks=[])
    await redis.aclose()


async def test_one_pending_request_per_session(rt: Any, uid: str) -> None:
    sid = f"00000000-0000-4000-8000-{uid:0>12}"
    assert await request_compaction(rt, sid)
    assert not await request_compaction(rt, sid)  # pending: no second message
    assert not await request_compaction(rt, sid, stale_after_s=60)  # fresh mark: not stale
    assert rt.kicks == [(keys.COMPACT_TASK, sid)]
    await rt.redis.delete(keys.compact_pending_key(sid))


async def test_a_stale_pending_mark_is_asked_again(rt: Any, uid: str) -> None:
    sid = f"00000000-0000-4000-8000-{uid:0>12}"
    key = keys.compact_pending_key(sid)
    await rt.redis.set(key, repr(time.time() - 120), ex=600)  # a request 2 minutes old
    assert not await request_compaction(rt, sid)  # after a turn: still one pending
    assert rt.kicks == []
    assert await request_compaction(rt, sid, stale_after_s=30)  # the reaper: asked again
    assert rt.kicks == [(keys.COMPACT_TASK, sid)]
    assert not await request_compaction(rt, sid, stale_after_s=30)  # and the mark is fresh
    await rt.redis.set(key, "1", ex=600)  # a mark written before marks held their time
    assert await request_compaction(rt, sid, stale_after_s=30)
    await rt.redis.delete(key)
