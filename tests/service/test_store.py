"""Contract of the role stores on real Postgres: sequencing, idempotency, fencing, the state
machine's claim/complete/fail/left, and what the reaper sees.

These are the storage halves of I1 (stale writes refused), I2 (gap-free per-session
order), I4 (items written once, with the status) and I12 (every turn ends in one
recorded state; only vanished holders count towards worker_lost).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from shared.errors import Fenced, IdempotencyConflict, TurnNotCancellable
from shared.multitask import CancelMode
from shared.status import ErrorCode, TurnStatus
from shared.store import TurnRecord, estimate_tokens
from tests.support.stores import Stores, stores_on

pytestmark = [pytest.mark.service, pytest.mark.anyio]

NO_SESSION = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
async def s(database_url: str) -> AsyncIterator[Stores]:
    async with stores_on(database_url) as stores:
        yield stores


async def _running(s: Stores, user: str, key: str, max_lost: int = 3) -> tuple[TurnRecord, int]:
    """Enqueue one turn and claim it as a new holder: (the running turn, its fence)."""
    turn, _, _ = await s.producer.enqueue(user, key, "hello", None)
    claim = await s.worker.claim(turn.session_id, None, max_lost)
    assert claim is not None and claim.turn is not None and claim.turn.id == turn.id
    assert claim.gave_up == []
    return claim.turn, claim.fence


async def _session(s: Stores, session_id: str) -> Any:
    async with s.db.engine.connect() as conn:
        return (
            await conn.execute(text("SELECT * FROM sessions WHERE id = :id"), {"id": session_id})
        ).one()


def _items(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{tag}-{i}"} for i in range(n)]


# ---------------------------------------------------------------------- producer
async def test_concurrent_enqueues_get_gap_free_seqs(s: Stores, uid: str) -> None:
    results = await asyncio.gather(
        *(s.producer.enqueue(f"u{uid}", f"s{uid}", f"msg {i}", None) for i in range(20))
    )
    assert all(created for _, created, _ in results)
    assert sorted(t.seq for t, _, _ in results) == list(range(1, 21))
    assert len({t.id for t, _, _ in results}) == 20
    session = await s.producer.get_session(f"u{uid}", f"s{uid}")
    assert session is not None and session.turn_count == 20
    assert [t.seq for t in await s.producer.turns_of(session.id)] == list(range(1, 21))


async def test_idempotency_key_returns_same_turn_without_consuming_a_seq(
    s: Stores, uid: str
) -> None:
    first, created, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "hi", f"k{uid}")
    again, created_again, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "hi", f"k{uid}")
    assert created and not created_again
    assert again.id == first.id and again.seq == first.seq == 1
    nxt, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "next", None)
    assert nxt.seq == 2
    session = await s.producer.get_session(f"u{uid}", f"s{uid}")
    assert session is not None and session.turn_count == 2
    assert len(await s.producer.turns_of(session.id)) == 2


async def test_idempotency_key_with_other_content_conflicts(s: Stores, uid: str) -> None:
    first, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "hi", f"k{uid}")
    with pytest.raises(IdempotencyConflict) as err:
        await s.producer.enqueue(f"u{uid}", f"s{uid}", "something else", f"k{uid}")
    assert err.value.turn_id == first.id and err.value.key == f"k{uid}"
    session = await s.producer.get_session(f"u{uid}", f"s{uid}")
    assert session is not None and session.turn_count == 1
    assert [t.id for t in await s.producer.turns_of(session.id)] == [first.id]


async def test_same_key_in_other_session_or_for_other_user_is_independent(
    s: Stores, uid: str
) -> None:
    a, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "hi", "same-key")
    b, created_b, _ = await s.producer.enqueue(f"u{uid}", f"t{uid}", "other", "same-key")
    c, created_c, _ = await s.producer.enqueue(f"v{uid}", f"s{uid}", "third", "same-key")
    assert created_b and created_c
    assert len({a.id, b.id, c.id}) == 3
    assert len({a.session_id, b.session_id, c.session_id}) == 3


async def test_get_turn_is_scoped_to_its_owner(s: Stores, uid: str) -> None:
    turn, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "hi", None)
    assert (await s.producer.get_turn(turn.id, f"u{uid}")) == turn
    assert (await s.producer.get_turn(turn.id)) == turn
    assert await s.producer.get_turn(turn.id, f"v{uid}") is None
    assert await s.producer.get_session(f"v{uid}", f"s{uid}") is None


async def test_namespaces_sharing_a_database_never_meet(database_url: str, uid: str) -> None:
    """Two deployments (TURNQ_NAMESPACE) on one database: the same user and session key
    are two sessions, and neither reads, cancels or sweeps the other's."""
    async with stores_on(database_url, "a:") as a, stores_on(database_url, "b:") as b:
        ta, _, _ = await a.producer.enqueue(f"u{uid}", f"s{uid}", "from a", None)
        tb, _, _ = await b.producer.enqueue(f"u{uid}", f"s{uid}", "from b", None)
        assert ta.session_id != tb.session_id and ta.seq == tb.seq == 1
        assert await b.producer.get_turn(ta.id) is None
        with pytest.raises(Exception, match="not found"):
            await b.producer.cancel_turn(ta.id, f"u{uid}", CancelMode.INTERRUPT)
        await a.execute(
            "UPDATE turns SET queued_at = now() - interval '1 hour' WHERE id = ANY(:ids)",
            ids=[ta.id, tb.id],
        )
        assert ta.session_id in await a.maintenance.stale_sessions(60, 1000)
        assert tb.session_id not in await a.maintenance.stale_sessions(60, 1000)
        assert tb.session_id in await b.maintenance.stale_sessions(60, 1000)
        listed, _ = await b.producer.list_sessions(f"u{uid}", 10, None)
        assert [r.id for r in listed] == [tb.session_id]


# ---------------------------------------------------------------------- worker
async def test_fenced_happy_path_appends_consecutive_items(s: Stores, uid: str) -> None:
    turn, fence = await _running(s, f"u{uid}", f"s{uid}")
    assert turn.status is TurnStatus.RUNNING and turn.attempts == 1
    second, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "again", None)
    first = _items(3, "t1")
    usage = {"requests": 1, "input_tokens": 12, "output_tokens": 3, "total_tokens": 15}
    after, status, nxt = await s.worker.complete(turn, fence, first, "answer 1", usage, 12, 3)
    assert (after, status) == (12, TurnStatus.SUCCEEDED)
    done = await s.producer.get_turn(turn.id)
    assert done is not None and done.status is TurnStatus.SUCCEEDED and done.terminal
    assert done.output == "answer 1" and done.usage == usage and done.context_tokens == 12
    assert done.finished_at is not None and done.error is None and done.error_code is None

    # The next turn was claimed by the same statement, with the new items in its context.
    assert nxt.fence == fence and nxt.turn is not None and nxt.turn.id == second.id
    assert nxt.turn.status is TurnStatus.RUNNING and nxt.turn.started_at is not None
    assert nxt.context is not None and nxt.context.items == first
    more = _items(2, "t2")
    _, _, last = await s.worker.complete(nxt.turn, fence, more, "answer 2", None, None, 3)
    assert last.turn is None and last.context is None

    history = await s.producer.history(turn.session_id)
    assert [p for p, _, _ in history] == [0, 1, 2, 3, 4]
    assert [tid for _, tid, _ in history] == [turn.id] * 3 + [second.id] * 2
    assert [item for _, _, item in history] == first + more
    assert [p for p, _, _ in await s.producer.history(turn.session_id, after=1, limit=2)] == [2, 3]
    session = await _session(s, turn.session_id)
    assert session.item_count == 5
    assert session.transcript_tokens == sum(estimate_tokens(i) for i in first + more)
    assert session.context_tokens == 12  # None keeps the last measurement
    with pytest.raises(Fenced):  # finished: no longer ours to finish, nothing written twice
        await s.worker.complete(nxt.turn, fence, _items(1, "x"), "x", None, None, 3)
    assert len(await s.producer.history(turn.session_id)) == 5


async def test_stale_fence_is_refused_and_writes_nothing(s: Stores, uid: str) -> None:
    turn, old = await _running(s, f"u{uid}", f"s{uid}")
    new = await s.worker.claim(turn.session_id, None, None)  # another holder took over
    assert new is not None and new.fence != old

    with pytest.raises(Fenced):
        await s.worker.complete(turn, old, _items(2, "stale"), "stale", None, 10, 3)
    with pytest.raises(Fenced):
        await s.worker.fail(turn, old, ErrorCode.AGENT_ERROR, "stale", max_lost=3)
    with pytest.raises(Fenced):
        await s.worker.claim(turn.session_id, old, 3)

    assert await s.producer.history(turn.session_id) == []
    after = await s.producer.get_turn(turn.id)
    assert after is not None and after.status is TurnStatus.RUNNING and after.output is None
    session = await _session(s, turn.session_id)
    assert (session.item_count, session.transcript_tokens, session.fence) == (0, 0, new.fence)


async def test_claims_of_an_unknown_session_are_none(s: Stores) -> None:
    assert await s.worker.claim(NO_SESSION, None, 3) is None
    assert await s.worker.claim(NO_SESSION, 1, 3) is None
    assert not await s.worker.claimable(NO_SESSION)


async def test_claim_takes_the_lowest_seq_with_its_context(s: Stores, uid: str) -> None:
    turns = [(await s.producer.enqueue(f"u{uid}", f"s{uid}", f"m{i}", None))[0] for i in range(3)]
    sid = turns[0].session_id
    claim = await s.worker.claim(sid, None, 3)
    assert claim is not None and claim.turn is not None and claim.turn.id == turns[0].id
    assert claim.turn.seq == 1 and claim.turn.started_at is not None
    assert claim.context is not None and claim.context.items == [] and claim.context.summary is None
    statuses = [t.status for t in await s.producer.turns_of(sid)]
    assert statuses == [TurnStatus.RUNNING, TurnStatus.QUEUED, TurnStatus.QUEUED]
    idle = await s.worker.claim(sid, claim.fence, None)  # max_lost None: check only, claim nothing
    assert idle is not None and idle.turn is None and idle.fence == claim.fence


async def test_partial_unique_index_allows_one_running_turn(s: Stores, uid: str) -> None:
    a, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "a", None)
    b, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "b", None)
    other, _, _ = await s.producer.enqueue(f"u{uid}", f"t{uid}", "c", None)
    mark = "UPDATE turns SET status = 'running' WHERE id = :id"
    await s.execute(mark, id=a.id)
    await s.execute(mark, id=other.id)  # another session: fine
    with pytest.raises(IntegrityError, match="turns_one_running_per_session"):
        await s.execute(mark, id=b.id)
    refetched = await s.producer.get_turn(b.id)
    assert refetched is not None and refetched.status is TurnStatus.QUEUED


async def test_fail_records_its_code_and_keeps_only_the_items_given(s: Stores, uid: str) -> None:
    turn, fence = await _running(s, f"u{uid}", f"s{uid}")
    kept = [{"role": "user", "content": "hello"}]
    status, nxt = await s.worker.fail(
        turn, fence, ErrorCode.GUARDRAIL, "the input guardrail 'no_pii' tripped", items=kept,
        max_lost=3,
    )  # fmt: skip
    assert status is TurnStatus.FAILED and nxt.turn is None
    failed = await s.producer.get_turn(turn.id)
    assert failed is not None and failed.status is TurnStatus.FAILED
    assert failed.error_code is ErrorCode.GUARDRAIL
    assert failed.error == "the input guardrail 'no_pii' tripped" and failed.output is None
    assert [i for _, _, i in await s.producer.history(turn.session_id)] == kept
    with pytest.raises(Fenced):  # terminal: nobody may finish it again
        await s.worker.complete(turn, fence, _items(1, "late"), "late", None, None, 3)
    assert len(await s.producer.history(turn.session_id)) == 1


async def test_a_cancel_request_wins_over_the_result_at_commit(s: Stores, uid: str) -> None:
    """interrupt keeps what the turn produced, rollback keeps nothing; both end cancelled,
    and a failure under a cancel request ends cancelled too."""
    for mode, kept in (("interrupt", 2), ("rollback", 0)):
        turn, fence = await _running(s, f"u{uid}", f"{mode}{uid}")
        await s.producer.cancel_turn(turn.id, f"u{uid}", CancelMode(mode))
        assert await s.worker.cancel_mode(turn.id) == mode
        _, status, _ = await s.worker.complete(turn, fence, _items(2, "x"), "out", None, 5, 3)
        assert status is TurnStatus.CANCELLED
        assert len(await s.producer.history(turn.session_id)) == kept
    turn, fence = await _running(s, f"u{uid}", f"fail{uid}")
    await s.producer.cancel_turn(turn.id, f"u{uid}", CancelMode.ROLLBACK)
    status, _ = await s.worker.fail(turn, fence, ErrorCode.AGENT_ERROR, "boom", max_lost=3)
    assert status is TurnStatus.CANCELLED
    final = await s.producer.get_turn(turn.id)
    assert final is not None and final.error_code is None
    assert await s.worker.cancel_mode(NO_SESSION) is None


async def test_cancel_outcomes(s: Stores, uid: str) -> None:
    running, fence = await _running(s, f"u{uid}", f"s{uid}")
    queued, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "later", None)
    turn, signal, now = await s.producer.cancel_turn(queued.id, f"u{uid}", CancelMode.INTERRUPT)
    assert (turn.status, signal, now) == (TurnStatus.CANCELLED, False, True)
    assert turn.error == "cancelled before it ran"
    turn, signal, now = await s.producer.cancel_turn(queued.id, f"u{uid}", CancelMode.INTERRUPT)
    assert (turn.status, signal, now) == (TurnStatus.CANCELLED, False, False)  # already
    turn, signal, now = await s.producer.cancel_turn(running.id, f"u{uid}", CancelMode.ROLLBACK)
    assert (turn.status, signal, now) == (TurnStatus.RUNNING, True, False)
    _, status, _ = await s.worker.complete(running, fence, [], "done", None, None, 3)
    assert status is TurnStatus.CANCELLED  # the request won at commit
    other, _, _ = await s.producer.enqueue(f"u{uid}", f"t{uid}", "x", None)
    claim = await s.worker.claim(other.session_id, None, 3)
    assert claim is not None and claim.turn is not None
    await s.worker.complete(claim.turn, claim.fence, [], "ok", None, None, 3)
    with pytest.raises(TurnNotCancellable):
        await s.producer.cancel_turn(other.id, f"u{uid}", CancelMode.INTERRUPT)
    with pytest.raises(Exception, match="not found"):
        await s.producer.cancel_turn(queued.id, f"v{uid}", CancelMode.INTERRUPT)


# ---------------------------------------------------------------------- vanished holders
async def test_takeovers_count_vanished_holders_and_worker_lost_ends_a_poison_turn(
    s: Stores, uid: str
) -> None:
    poison, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "poison", None)
    healthy, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "fine", None)
    sid = poison.session_id
    for attempt in (1, 2):  # each holder "dies" with the turn running; a new one takes over
        claim = await s.worker.claim(sid, None, 2)
        assert claim is not None and claim.turn is not None and claim.turn.id == poison.id
        assert claim.turn.attempts == attempt and claim.gave_up == []
    lost = await s.scalar("SELECT cardinality(lost_fences) FROM turns WHERE id = :id", id=poison.id)
    assert lost == 1  # one vanished holder so far: the second holder is still running it
    claim = await s.worker.claim(sid, None, 2)
    assert claim is not None and claim.gave_up == [poison.id]
    assert claim.turn is not None and claim.turn.id == healthy.id  # the queue moves on
    failed = await s.producer.get_turn(poison.id)
    assert failed is not None and failed.status is TurnStatus.FAILED
    assert failed.error_code is ErrorCode.WORKER_LOST
    assert failed.error is not None and "vanished 2 times" in failed.error
    assert failed.attempts == 2 and await s.producer.history(sid) == []


async def test_a_holder_that_left_alive_is_not_counted(s: Stores, uid: str) -> None:
    """A holder that lost its lock (or was fenced out, or lost Postgres) says so, before or
    after the takeover: either way only vanished holders reach worker_lost."""
    turn, fence = await _running(s, f"u{uid}", f"s{uid}", max_lost=1)
    await s.worker.left(turn.session_id, turn.id, fence)  # before anyone took over
    claim = await s.worker.claim(turn.session_id, None, 1)
    assert claim is not None and claim.gave_up == [] and claim.turn is not None
    assert claim.turn.id == turn.id and claim.turn.attempts == 2
    second = await s.worker.claim(turn.session_id, None, 2)  # the 2nd holder "paused"
    assert second is not None and second.turn is not None and second.turn.attempts == 3
    counted = "SELECT lost_fences FROM turns WHERE id = :id"
    assert await s.scalar(counted, id=turn.id) == [claim.fence]
    await s.worker.left(turn.session_id, turn.id, claim.fence)  # it woke up: after takeover
    await s.worker.left(turn.session_id, turn.id, claim.fence)  # repeating it changes nothing
    assert await s.scalar(counted, id=turn.id) == []
    _, status, _ = await s.worker.complete(second.turn, second.fence, [], "ok", None, None, 2)
    assert status is TurnStatus.SUCCEEDED


async def test_a_waiting_turn_holds_the_line(s: Stores, uid: str) -> None:
    """FIFO: a turn paused for a human keeps the session's later turns queued, and the
    session is not claimable (a drain does not spin on it)."""
    first, fence = await _running(s, f"u{uid}", f"s{uid}")
    later, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "later", None)
    await s.execute("UPDATE turns SET status = 'waiting' WHERE id = :id", id=first.id)
    assert not await s.worker.claimable(first.session_id)
    claim = await s.worker.claim(first.session_id, None, 3)
    assert claim is not None and claim.turn is None
    assert (await s.producer.get_turn(later.id)).status is TurnStatus.QUEUED  # type: ignore[union-attr]
    await s.execute("UPDATE turns SET status = 'queued' WHERE id = :id", id=first.id)
    assert await s.worker.claimable(first.session_id)
    claim = await s.worker.claim(first.session_id, None, 3)
    assert claim is not None and claim.turn is not None and claim.turn.id == first.id
    assert fence != claim.fence


# ---------------------------------------------------------------------- reaper
async def test_stale_sessions_oldest_first_and_mark_kicked(s: Stores, uid: str) -> None:
    older, _, _ = await s.producer.enqueue(f"u{uid}", f"o{uid}", "older", None)
    stuck, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "stuck", None)
    fresh, _, _ = await s.producer.enqueue(f"u{uid}", f"f{uid}", "fresh", None)
    waiting, _, _ = await s.producer.enqueue(f"u{uid}", f"w{uid}", "waits", None)
    done, fence = await _running(s, f"u{uid}", f"d{uid}")
    await s.worker.complete(done, fence, [], "ok", None, None, 3)
    await s.execute(
        "UPDATE turns SET queued_at = now() - interval '1 hour' WHERE id = ANY(:ids)",
        ids=[stuck.id, done.id, waiting.id],
    )
    await s.execute(
        "UPDATE turns SET queued_at = now() - interval '2 hours' WHERE id = :id", id=older.id
    )
    await s.execute("UPDATE turns SET status = 'waiting' WHERE id = :id", id=waiting.id)

    stale = await s.maintenance.stale_sessions(stale_s=60, limit=100_000)
    mine = [sid for sid in stale if sid in {older.session_id, stuck.session_id}]
    assert mine == [older.session_id, stuck.session_id]  # the longest waiting first
    assert fresh.session_id not in stale  # queued just now
    assert done.session_id not in stale  # nothing runnable
    assert waiting.session_id not in stale  # waits for a person, not a worker
    assert len(await s.maintenance.stale_sessions(stale_s=60, limit=1)) == 1

    await s.maintenance.mark_kicked([stuck.session_id])
    assert stuck.session_id not in await s.maintenance.stale_sessions(60, 100_000)
    kicked = "SELECT last_kick_at IS NOT NULL FROM turns WHERE id = :id"
    assert await s.scalar(kicked, id=stuck.id) is True
    assert await s.scalar(kicked, id=done.id) is False  # terminal turns are never marked
    await s.maintenance.mark_kicked([])  # no-op, no SQL error


async def test_mark_kicked_never_waits_for_a_turn_a_drain_holds(s: Stores, uid: str) -> None:
    """A drain's commit locks its running turn (turnq_hold), then claims the next queued
    one.  The reaper's mark used to lock every runnable turn of its sessions in scan
    order, the queued one first, then wait for the running one: a deadlock, and the
    aborted drain's turn ran again though nothing had failed (found by the chaos test of
    kills and a freeze under long model calls, several times a run)."""
    user = f"u{uid}"
    running, fence = await _running(s, user, f"held{uid}")
    queued, _, _ = await s.producer.enqueue(user, f"held{uid}", "next", None)
    free, _, _ = await s.producer.enqueue(user, f"free{uid}", "alone", None)
    kicked = "SELECT last_kick_at IS NOT NULL FROM turns WHERE id = :id"
    async with s.db.engine.connect() as drain:
        await drain.execute(text("SET LOCAL lock_timeout = '3s'"))
        await drain.execute(
            text("SELECT turnq_hold(:sid, :fence, :tid)"),
            {"sid": running.session_id, "fence": fence, "tid": running.id},
        )
        await asyncio.wait_for(
            s.maintenance.mark_kicked([running.session_id, free.session_id]), timeout=3
        )
        # The drain finishes its turn and claims the next: nothing of the mark's is in its way.
        for status, tid in (("succeeded", running.id), ("running", queued.id)):
            await drain.execute(
                text("UPDATE turns SET status = :st WHERE id = :id"), {"st": status, "id": tid}
            )
        await drain.rollback()
    assert await s.scalar(kicked, id=free.id) is True
    assert await s.scalar(kicked, id=queued.id) is True
    assert await s.scalar(kicked, id=running.id) is False  # held: skipped, marked next pass
    assert running.session_id in await s.maintenance.stale_sessions(-1, 100_000)


async def test_a_new_holders_claim_skips_the_wal_flush_and_nothing_else_does(
    s: Stores, uid: str
) -> None:
    """Only the bump-and-claim of a new lock holder commits asynchronously (decision 0005)."""
    turn, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "hi", None)

    async def claim_setting(fence: int | None) -> Any:
        async with s.db.engine.begin() as conn:  # inside one transaction: SET LOCAL is visible
            row = (
                await conn.execute(
                    text("SELECT fence FROM turnq_claim(:sid, :fence, 3)"),
                    {"sid": turn.session_id, "fence": fence},
                )
            ).one()
            return row[0], (await conn.execute(text("SHOW synchronous_commit"))).scalar()

    fence, setting = await claim_setting(None)
    assert setting == "off"
    assert (await claim_setting(fence))[1] == "on"
