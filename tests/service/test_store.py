"""Contract of ``shared.store.Store`` on real Postgres: sequencing, idempotency, fencing.

These are the storage halves of I1 (stale writes refused), I2 (gap-free per-session
order), I3 (poison turns end failed) and I4 (items written once, with the status).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from shared.errors import Fenced, IdempotencyConflict
from shared.status import TurnStatus
from shared.store import Store, TurnRecord, create_engine, estimate_tokens

pytestmark = [pytest.mark.service, pytest.mark.anyio]


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[Store]:
    s = Store(create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1)))
    yield s
    await s.close()


async def _scalar(store: Store, sql: str, **params: Any) -> Any:
    async with store.engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def _running(store: Store, user: str, key: str) -> tuple[TurnRecord, int]:
    """Enqueue one turn and claim it: (the running turn, the fence it runs under)."""
    turn, _, _ = await store.enqueue(user, key, "hello", None)
    fence = await store.bump_fence(turn.session_id)
    assert fence is not None
    claimed, gave_up = await store.claim_next(turn.session_id, fence, max_attempts=3)
    assert claimed is not None and claimed.id == turn.id and gave_up == []
    return claimed, fence


def _items(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{tag}-{i}"} for i in range(n)]


# ---------------------------------------------------------------------- enqueue
async def test_concurrent_enqueues_get_gap_free_seqs(store: Store, uid: str) -> None:
    results = await asyncio.gather(
        *(store.enqueue(f"u{uid}", f"s{uid}", f"msg {i}", None) for i in range(20))
    )
    assert all(created for _, created, _ in results)
    assert sorted(t.seq for t, _, _ in results) == list(range(1, 21))
    assert len({t.id for t, _, _ in results}) == 20
    session = await store.get_session(f"u{uid}", f"s{uid}")
    assert session is not None and session.turn_count == 20
    assert [t.seq for t in await store.turns_of(session.id)] == list(range(1, 21))


async def test_idempotency_key_returns_same_turn_without_consuming_a_seq(
    store: Store, uid: str
) -> None:
    first, created, _ = await store.enqueue(f"u{uid}", f"s{uid}", "hi", f"k{uid}")
    again, created_again, _ = await store.enqueue(f"u{uid}", f"s{uid}", "hi", f"k{uid}")
    assert created and not created_again
    assert again.id == first.id and again.seq == first.seq == 1
    nxt, _, _ = await store.enqueue(f"u{uid}", f"s{uid}", "next", None)
    assert nxt.seq == 2
    session = await store.get_session(f"u{uid}", f"s{uid}")
    assert session is not None and session.turn_count == 2
    assert len(await store.turns_of(session.id)) == 2


async def test_idempotency_key_with_other_content_conflicts(store: Store, uid: str) -> None:
    first, _, _ = await store.enqueue(f"u{uid}", f"s{uid}", "hi", f"k{uid}")
    with pytest.raises(IdempotencyConflict) as err:
        await store.enqueue(f"u{uid}", f"s{uid}", "something else", f"k{uid}")
    assert err.value.turn_id == first.id and err.value.key == f"k{uid}"
    session = await store.get_session(f"u{uid}", f"s{uid}")
    assert session is not None and session.turn_count == 1
    assert [t.id for t in await store.turns_of(session.id)] == [first.id]


async def test_same_key_in_other_session_or_for_other_user_is_independent(
    store: Store, uid: str
) -> None:
    a, _, _ = await store.enqueue(f"u{uid}", f"s{uid}", "hi", "same-key")
    b, created_b, _ = await store.enqueue(f"u{uid}", f"t{uid}", "other", "same-key")
    c, created_c, _ = await store.enqueue(f"v{uid}", f"s{uid}", "third", "same-key")
    assert created_b and created_c
    assert len({a.id, b.id, c.id}) == 3
    assert len({a.session_id, b.session_id, c.session_id}) == 3


async def test_get_turn_is_scoped_to_its_owner(store: Store, uid: str) -> None:
    turn, _, _ = await store.enqueue(f"u{uid}", f"s{uid}", "hi", None)
    assert (await store.get_turn(turn.id, f"u{uid}")) == turn
    assert (await store.get_turn(turn.id)) == turn
    assert await store.get_turn(turn.id, f"v{uid}") is None
    assert await store.get_session(f"v{uid}", f"s{uid}") is None


# ---------------------------------------------------------------------- worker path
async def test_fenced_happy_path_appends_consecutive_items(store: Store, uid: str) -> None:
    turn, fence = await _running(store, f"u{uid}", f"s{uid}")
    assert turn.status is TurnStatus.RUNNING and turn.attempts == 1
    first = _items(3, "t1")
    usage = {"requests": 1, "input_tokens": 12, "output_tokens": 3, "total_tokens": 15}
    await store.complete_turn(turn, fence, first, "answer 1", usage, context_tokens=12)

    done = await store.get_turn(turn.id)
    assert done is not None
    assert done.status is TurnStatus.SUCCEEDED and done.terminal
    assert done.output == "answer 1" and done.usage == usage and done.context_tokens == 12
    assert done.finished_at is not None and done.error is None

    second, _, _ = await store.enqueue(f"u{uid}", f"s{uid}", "again", None)
    claimed, _ = await store.claim_next(turn.session_id, fence, max_attempts=3)
    assert claimed is not None and claimed.id == second.id
    more = _items(2, "t2")
    await store.complete_turn(claimed, fence, more, "answer 2", None, context_tokens=None)

    history = await store.history(turn.session_id)
    assert [p for p, _, _ in history] == [0, 1, 2, 3, 4]
    assert [tid for _, tid, _ in history] == [turn.id] * 3 + [second.id] * 2
    assert [item for _, _, item in history] == first + more
    assert [p for p, _, _ in await store.history(turn.session_id, after=1, limit=2)] == [2, 3]
    session = await store.get_session_by_id(turn.session_id)
    assert session is not None
    assert session.item_count == 5
    assert session.transcript_tokens == sum(estimate_tokens(i) for i in first + more)
    assert session.context_tokens == 12  # None keeps the last measurement
    ctx = await store.load_context(turn.session_id)
    assert ctx.items == first + more and ctx.summary is None and ctx.first_position == 0


async def test_stale_fence_is_refused_and_writes_nothing(store: Store, uid: str) -> None:
    turn, old = await _running(store, f"u{uid}", f"s{uid}")
    new = await store.bump_fence(turn.session_id)  # another worker took the session
    assert new is not None and new > old

    with pytest.raises(Fenced):
        await store.complete_turn(turn, old, _items(2, "stale"), "stale", None, 10)
    with pytest.raises(Fenced):
        await store.fail_turn(turn, old, "stale")
    with pytest.raises(Fenced):
        await store.claim_next(turn.session_id, old, max_attempts=3)

    assert await store.history(turn.session_id) == []
    after = await store.get_turn(turn.id)
    assert after is not None and after.status is TurnStatus.RUNNING and after.output is None
    session = await store.get_session_by_id(turn.session_id)
    assert session is not None
    assert (session.item_count, session.transcript_tokens, session.fence) == (0, 0, new)


async def test_bump_fence_of_unknown_session_is_none(store: Store) -> None:
    assert await store.bump_fence("00000000-0000-4000-8000-000000000000") is None


async def test_claim_next_takes_lowest_seq(store: Store, uid: str) -> None:
    turns = [(await store.enqueue(f"u{uid}", f"s{uid}", f"m{i}", None))[0] for i in range(3)]
    sid = turns[0].session_id
    fence = await store.bump_fence(sid)
    assert fence is not None
    claimed, _ = await store.claim_next(sid, fence, max_attempts=3)
    assert claimed is not None and claimed.id == turns[0].id and claimed.seq == 1
    assert claimed.started_at is not None
    statuses = [t.status for t in await store.turns_of(sid)]
    assert statuses == [TurnStatus.RUNNING, TurnStatus.QUEUED, TurnStatus.QUEUED]

    # A new holder retries the running turn first (it is still the lowest pending).
    fence2 = await store.bump_fence(sid)
    assert fence2 is not None
    retried, _ = await store.claim_next(sid, fence2, max_attempts=3)
    assert retried is not None and retried.id == turns[0].id and retried.attempts == 2
    await store.complete_turn(retried, fence2, _items(1, "x"), "ok", None, None)
    nxt, _ = await store.claim_next(sid, fence2, max_attempts=3)
    assert nxt is not None and nxt.id == turns[1].id


async def test_claim_next_on_idle_session_is_none(store: Store, uid: str) -> None:
    turn, fence = await _running(store, f"u{uid}", f"s{uid}")
    await store.complete_turn(turn, fence, [], "done", None, None)
    assert await store.claim_next(turn.session_id, fence, max_attempts=3) == (None, [])
    assert not await store.has_pending(turn.session_id)


async def test_partial_unique_index_allows_one_running_turn(store: Store, uid: str) -> None:
    a, _, _ = await store.enqueue(f"u{uid}", f"s{uid}", "a", None)
    b, _, _ = await store.enqueue(f"u{uid}", f"s{uid}", "b", None)
    other, _, _ = await store.enqueue(f"u{uid}", f"t{uid}", "c", None)
    mark = "UPDATE turns SET status = 'running' WHERE id = :id"
    async with store.engine.begin() as conn:
        await conn.execute(text(mark), {"id": a.id})
        await conn.execute(text(mark), {"id": other.id})  # another session: fine
    with pytest.raises(IntegrityError, match="turns_one_running_per_session"):
        async with store.engine.begin() as conn:
            await conn.execute(text(mark), {"id": b.id})
    refetched = await store.get_turn(b.id)
    assert refetched is not None and refetched.status is TurnStatus.QUEUED


async def test_turn_over_max_attempts_is_failed_by_claim_next(store: Store, uid: str) -> None:
    poison, _, _ = await store.enqueue(f"u{uid}", f"s{uid}", "poison", None)
    healthy, _, _ = await store.enqueue(f"u{uid}", f"s{uid}", "fine", None)
    sid = poison.session_id
    for attempt in (1, 2):  # each attempt's worker "dies": a new holder claims again
        fence = await store.bump_fence(sid)
        assert fence is not None
        claimed, gave_up = await store.claim_next(sid, fence, max_attempts=2)
        assert claimed is not None and claimed.id == poison.id and claimed.attempts == attempt
        assert gave_up == []
    fence = await store.bump_fence(sid)
    assert fence is not None
    claimed, gave_up = await store.claim_next(sid, fence, max_attempts=2)
    assert gave_up == [poison.id]
    assert claimed is not None and claimed.id == healthy.id  # the queue moves on
    failed = await store.get_turn(poison.id)
    assert failed is not None and failed.status is TurnStatus.FAILED
    assert failed.error is not None and "gave up after 2 attempts" in failed.error
    assert failed.finished_at is not None
    assert await store.history(sid) == []


async def test_fail_turn_writes_no_items(store: Store, uid: str) -> None:
    turn, fence = await _running(store, f"u{uid}", f"s{uid}")
    await store.fail_turn(turn, fence, "the model said no")
    failed = await store.get_turn(turn.id)
    assert failed is not None and failed.status is TurnStatus.FAILED
    assert failed.error == "the model said no" and failed.output is None
    assert failed.finished_at is not None
    assert await store.history(turn.session_id) == []
    session = await store.get_session_by_id(turn.session_id)
    assert session is not None and session.item_count == 0
    with pytest.raises(Fenced):  # terminal: nobody may finish it again
        await store.complete_turn(turn, fence, _items(1, "late"), "late", None, None)
    assert await store.history(turn.session_id) == []


# ---------------------------------------------------------------------- reaper
async def test_stale_sessions_and_mark_kicked(store: Store, uid: str) -> None:
    stuck, _, _ = await store.enqueue(f"u{uid}", f"s{uid}", "stuck", None)
    fresh, _, _ = await store.enqueue(f"u{uid}", f"f{uid}", "fresh", None)
    done, fence = await _running(store, f"u{uid}", f"d{uid}")
    await store.complete_turn(done, fence, [], "ok", None, None)
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE turns SET queued_at = now() - interval '1 hour' WHERE id = ANY(:ids)"),
            {"ids": [stuck.id, done.id]},
        )

    stale = await store.stale_sessions(stale_s=60, limit=1000)
    assert stuck.session_id in stale
    assert fresh.session_id not in stale  # queued just now
    assert done.session_id not in stale  # nothing pending
    assert len(await store.stale_sessions(stale_s=60, limit=1)) == 1

    await store.mark_kicked([stuck.session_id])
    assert stuck.session_id not in await store.stale_sessions(stale_s=60, limit=1000)
    kicked = await _scalar(
        store, "SELECT last_kick_at IS NOT NULL FROM turns WHERE id = :id", id=stuck.id
    )
    assert kicked is True
    untouched = await _scalar(store, "SELECT last_kick_at FROM turns WHERE id = :id", id=done.id)
    assert untouched is None  # terminal turns are never marked
    await store.mark_kicked([])  # no-op, no SQL error


# ---------------------------------------------------------------------- one round trip a step
async def test_claim_returns_the_turn_with_its_context_in_one_call(store: Store, uid: str) -> None:
    first, fence = await _running(store, f"u{uid}", f"s{uid}")
    await store.complete_turn(first, fence, _items(2, "t1"), "answer 1", None, None)
    second, _, _ = await store.enqueue(f"u{uid}", f"s{uid}", "second", None)

    claimed = await store.claim(second.session_id, None, max_attempts=3)  # a new lock holder
    assert claimed is not None and claimed.fence > fence and claimed.gave_up == []
    assert claimed.turn is not None and claimed.turn.id == second.id
    assert claimed.turn.status is TurnStatus.RUNNING and claimed.turn.attempts == 1
    assert claimed.context == await store.load_context(second.session_id)
    assert claimed.context is not None and claimed.context.items == _items(2, "t1")

    idle = await store.claim(second.session_id, claimed.fence, max_attempts=None)
    assert idle is not None and idle.turn is None and idle.context is None
    assert await store.claim("00000000-0000-4000-8000-000000000000", None, 3) is None


async def test_complete_and_claim_hands_over_the_next_turn_with_the_new_items(
    store: Store, uid: str
) -> None:
    first, fence = await _running(store, f"u{uid}", f"s{uid}")
    second, _, _ = await store.enqueue(f"u{uid}", f"s{uid}", "second", None)
    after, status, nxt = await store.complete_and_claim(
        first, fence, _items(2, "t1"), "answer 1", None, 40, max_attempts=3
    )
    assert (after, status) == (40, TurnStatus.SUCCEEDED)
    assert nxt.fence == fence and nxt.turn is not None and nxt.turn.id == second.id
    assert nxt.context is not None and nxt.context.items == _items(2, "t1")
    assert nxt.turn.started_at is not None and nxt.turn.status is TurnStatus.RUNNING

    _, _, last = await store.complete_and_claim(
        nxt.turn, fence, _items(1, "t2"), "answer 2", None, None, max_attempts=3
    )
    assert last.turn is None and last.context is None
    with pytest.raises(Fenced):  # finished: no longer ours to finish, nothing written twice
        await store.complete_and_claim(nxt.turn, fence, _items(1, "x"), "x", None, None, 3)
    assert [i for _, _, i in await store.history(first.session_id)] == (
        _items(2, "t1") + _items(1, "t2")
    )


async def test_cancel_mode_reads_the_recorded_request(store: Store, uid: str) -> None:
    turn, _ = await _running(store, f"u{uid}", f"s{uid}")
    assert await store.cancel_mode(turn.id) is None
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE turns SET cancel_mode = 'rollback' WHERE id = :id"), {"id": turn.id}
        )
    assert await store.cancel_mode(turn.id) == "rollback"
    assert await store.cancel_mode("00000000-0000-4000-8000-000000000000") is None


async def test_a_new_holders_claim_skips_the_wal_flush_and_nothing_else_does(
    store: Store, uid: str
) -> None:
    """Only the bump-and-claim of a new lock holder commits asynchronously (migration 0005)."""
    turn, _, _ = await store.enqueue(f"u{uid}", f"s{uid}", "hi", None)

    async def claim_setting(fence: int | None) -> Any:
        async with store.engine.begin() as conn:  # inside one transaction: SET LOCAL is visible
            await conn.execute(
                text("SELECT * FROM turnq_claim(:sid, :fence, 3)"),
                {"sid": turn.session_id, "fence": fence},
            )
            return await _setting(conn)

    async def _setting(conn: Any) -> Any:
        return (await conn.execute(text("SHOW synchronous_commit"))).scalar()

    assert await claim_setting(None) == "off"
    fence = await store.bump_fence(turn.session_id)
    assert await claim_setting(fence) == "on"
