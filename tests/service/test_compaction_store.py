"""Compaction commits by compare-and-swap on the mark, next to live turns (I7, I9)."""

from __future__ import annotations

import types
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.compaction.base import CompactionResult, ContextPolicy, policy_from_settings
from shared.compaction.store import CompactionStore
from shared.settings import Settings
from tests.support.stores import Stores, stores_on
from workers.agent import load_context_overrides

pytestmark = [pytest.mark.service, pytest.mark.anyio]


@pytest.fixture
async def store(stack_env: dict[str, str]) -> Any:
    async with stores_on(stack_env["TURNQ_DATABASE_URL"]) as s:
        yield s


async def add_turn(store: Stores, user: str, key: str, text: str) -> None:
    answer = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": f"re: {text}"}],
    }
    await store.add_turn(user, key, [{"role": "user", "content": text}, answer])


async def session_with_turns(store: Stores, uid: str, n: int) -> str:
    for i in range(n):
        await add_turn(store, f"u-{uid}", f"s-{uid}", f"message {i}")
    record = await store.producer.get_session(f"u-{uid}", f"s-{uid}")
    assert record is not None
    return record.id


async def test_commit_moves_mark_and_keeps_transcript(store: Stores, uid: str) -> None:
    sid = await session_with_turns(store, uid, 5)
    cstore = CompactionStore(store.db)
    snap = await cstore.snapshot(sid)
    assert snap is not None and snap.mark == 0 and len(snap.items) == 10
    after = await cstore.commit(
        snap, CompactionResult(new_mark=6, summary="User facts:\n- none"), strategy="summarize",
        started_at=datetime.now(UTC),
    )  # fmt: skip
    assert after is not None and after < snap.tokens
    record = await store.session(sid)
    assert record is not None and record.compaction_mark == 6 and record.summary
    assert len(await store.producer.history(sid)) == 10  # nothing deleted
    ctx = await store.context(sid)
    assert ctx.first_position == 6 and len(ctx.items) == 4
    assert [c["status"] for c in await cstore.history(sid)] == ["succeeded"]


async def test_lost_cas_writes_nothing(store: Stores, uid: str) -> None:
    sid = await session_with_turns(store, uid, 4)
    cstore = CompactionStore(store.db)
    first, second = await cstore.snapshot(sid), await cstore.snapshot(sid)
    assert first is not None and second is not None
    now = datetime.now(UTC)
    assert await cstore.commit(second, CompactionResult(4, "B wins"), strategy="s", started_at=now)
    lost = await cstore.commit(first, CompactionResult(6, "A loses"), strategy="s", started_at=now)
    assert lost is None
    record = await store.session(sid)
    assert record is not None and record.summary == "B wins" and record.compaction_mark == 4
    assert sorted(c["status"] for c in await cstore.history(sid)) == ["conflict", "succeeded"]


async def test_turn_committed_during_compaction_stays_after_the_mark(
    store: Stores, uid: str
) -> None:
    sid = await session_with_turns(store, uid, 3)
    cstore = CompactionStore(store.db)
    snap = await cstore.snapshot(sid)
    assert snap is not None
    await add_turn(store, f"u-{uid}", f"s-{uid}", "arrived while summarizing")
    after = await cstore.commit(
        snap, CompactionResult(4, "summary"), strategy="s", started_at=datetime.now(UTC)
    )
    assert after is not None
    ctx = await store.context(sid)
    assert [i.get("content") for i in ctx.items if i.get("role") == "user"] == [
        "message 2",
        "arrived while summarizing",
    ]
    # context_tokens counts the late turn too (recomputed at commit, not from the snapshot)
    assert after > sum(i.tokens for i in snap.items[4:])


async def test_compact_retries_on_fresh_data_after_a_lost_cas(
    store: Stores, stack_env: dict[str, str], uid: str
) -> None:
    from workers.compact import compact

    sid = await session_with_turns(store, uid, 12)
    cstore = CompactionStore(store.db)
    calls = 0

    async def racing_summarizer(previous: str | None, evicted: Any, *, max_tokens: int) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:  # another compactor commits between our snapshot and our commit
            snap = await cstore.snapshot(sid)
            assert snap is not None
            await cstore.commit(
                snap, CompactionResult(2, "rival"), strategy="s", started_at=datetime.now(UTC)
            )
        return f"summary {calls} of {len(evicted)} items"

    redis = aioredis.Redis.from_url(stack_env["TURNQ_REDIS_URL"])
    rt = types.SimpleNamespace(
        redis=redis,
        db=store.db,
        policy=ContextPolicy(
            window_tokens=400,
            trigger_tokens=60,
            target_tokens=40,
            reserve_output_tokens=50,
            summary_max_tokens=30,
        ),
        summarizer=lambda: racing_summarizer,
    )
    try:
        assert await compact(rt, sid) == "compacted"  # type: ignore[arg-type]
    finally:
        await redis.aclose()
    statuses = [c["status"] for c in reversed(await cstore.history(sid))]
    assert statuses[-2:] == ["conflict", "succeeded"]
    record = await store.session(sid)
    assert record is not None and (record.summary or "").startswith("summary 2 of")
    assert record.compaction_mark > 2


def test_agent_overrides_the_deployment_policy() -> None:
    overrides = load_context_overrides("tests.agents_small_context:build")
    policy = policy_from_settings(Settings(context_window_tokens=128_000), overrides)
    assert (policy.window_tokens, policy.trigger_tokens, policy.strategy) == (8000, 6000, "hybrid")
    assert (
        policy_from_settings(
            Settings(context_window_tokens=10_000, compact_trigger=0.5)
        ).trigger_tokens
        == 5000
    )
    with pytest.raises(ValueError, match="target_tokens"):
        policy_from_settings(Settings(), {"target_tokens": 10**9})
