"""The step journal's Postgres half on real Postgres (turnq_journal, turnq_expire_journal):
steps are written only under the running holder's fence, a finished step is never
overwritten, a takeover's claim brings the journal, and beat removes finished turns'
journals in bounded batches, never a running or waiting turn's.

The worker side (replay through the model and tool wrappers) is tests/unit/test_journal.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.errors import Fenced
from shared.status import TurnStatus
from shared.store import TurnRecord
from tests.support.stores import Stores, stores_on

pytestmark = [pytest.mark.service, pytest.mark.anyio]


@pytest.fixture
async def s(database_url: str, uid: str) -> AsyncIterator[Stores]:
    """A namespace of this test alone: expiry sweeps only its own deployment's turns."""
    async with stores_on(database_url, f"journal{uid}:") as stores:
        yield stores


async def _running(s: Stores, key: str) -> tuple[TurnRecord, int]:
    turn, _, _ = await s.producer.enqueue("alice", key, "hello", None)
    claim = await s.worker.claim(turn.session_id, None, 5)
    assert claim is not None and claim.turn is not None and claim.turn.id == turn.id
    return claim.turn, claim.fence


async def _write(
    s: Stores, turn: TurnRecord, fence: int, kind: str, key: str, state: str, payload: Any
) -> None:
    await s.worker.journal(turn.session_id, turn.id, fence, kind, key, state, payload)


async def _steps(s: Stores, turn_id: str) -> list[dict[str, Any]]:
    async with s.db.engine.connect() as conn:
        from sqlalchemy import text

        rows = await conn.execute(
            text(
                "SELECT kind, key, state, fence, payload, finished_at IS NOT NULL AS finished "
                "FROM turn_steps WHERE turn_id = :t ORDER BY created_at, kind, key"
            ),
            {"t": turn_id},
        )
        return [dict(r._mapping) for r in rows]


# ------------------------------------------------------------------ fencing
async def test_a_step_is_written_under_the_holders_fence_and_a_stale_holder_is_refused(
    s: Stores,
) -> None:
    turn, fence = await _running(s, "fenced")
    await _write(s, turn, fence, "model", "0", "done", {"output": [], "n": 1})
    # another holder takes the session over (its holder vanished): a new fence
    takeover = await s.worker.claim(turn.session_id, None, 5)
    assert takeover is not None and takeover.turn is not None and takeover.turn.id == turn.id
    assert takeover.fence != fence
    # ... and gets the journal with the claim, to replay it
    assert takeover.turn.journal == [
        {"kind": "model", "key": "0", "state": "done", "payload": {"output": [], "n": 1}}
    ]
    with pytest.raises(Fenced):  # the old holder, still running, writes its tool's output
        await _write(s, turn, fence, "tool", "call_1", "done", {"output": "late"})
    with pytest.raises(Fenced):  # a fence nobody holds
        await _write(s, turn, takeover.fence + 7, "tool", "call_1", "done", {"output": "x"})
    assert [(r["kind"], r["key"]) for r in await _steps(s, turn.id)] == [("model", "0")]
    await _write(s, turn, takeover.fence, "tool", "call_1", "done", {"output": "ok"})
    steps = await _steps(s, turn.id)
    assert [(r["kind"], r["key"], r["fence"]) for r in steps] == [
        ("model", "0", fence),
        ("tool", "call_1", takeover.fence),
    ]


async def test_a_turn_that_is_no_longer_running_takes_no_step(s: Stores) -> None:
    turn, fence = await _running(s, "finished")
    await s.worker.complete(turn, fence, [{"role": "user", "content": "hello"}], "hi", None, 1, 5)
    with pytest.raises(Fenced):  # the same holder and fence, but the turn has ended
        await _write(s, turn, fence, "model", "1", "done", {"output": []})
    assert await _steps(s, turn.id) == []


async def test_a_step_of_another_sessions_turn_is_refused(s: Stores) -> None:
    mine, fence = await _running(s, "mine")
    other, _ = await _running(s, "other")
    # Fences jump by a random amount, so two sessions' fences almost never meet and the
    # fence alone would refuse this; make them equal to see the session check itself.
    await s.execute("UPDATE turns SET fence = :f WHERE id = :t", f=fence, t=other.id)
    with pytest.raises(Fenced):  # my fence, another session's turn id
        await s.worker.journal(mine.session_id, other.id, fence, "model", "0", "done", {})
    assert await _steps(s, other.id) == []


# ------------------------------------------------------------------ append-only
async def test_started_then_done_and_a_done_step_is_never_overwritten(s: Stores) -> None:
    turn, fence = await _running(s, "append")
    await _write(s, turn, fence, "tool", "call_1", "started", {"arguments": "{}"})
    started = await _steps(s, turn.id)
    assert [(r["state"], r["finished"]) for r in started] == [("started", False)]
    await _write(s, turn, fence, "tool", "call_1", "done", {"output": "first"})
    done = await _steps(s, turn.id)
    assert [(r["state"], r["payload"], r["finished"]) for r in done] == [
        ("done", {"output": "first"}, True)
    ]
    # A second ``done`` for the same key (a holder that ran the step again) is accepted
    # without an error and changes nothing: the first outcome stands.  So does a late
    # ``started``.
    await _write(s, turn, fence, "tool", "call_1", "done", {"output": "second"})
    await _write(s, turn, fence, "tool", "call_1", "started", {"arguments": "{}"})
    assert await _steps(s, turn.id) == done


async def test_model_and_tool_steps_with_the_same_key_are_apart(s: Stores) -> None:
    turn, fence = await _running(s, "kinds")
    await _write(s, turn, fence, "model", "0", "done", {"output": ["m"]})
    await _write(s, turn, fence, "tool", "0", "done", {"output": "t"})
    assert [(r["kind"], r["payload"]) for r in await _steps(s, turn.id)] == [
        ("model", {"output": ["m"]}),
        ("tool", {"output": "t"}),
    ]


async def test_a_step_with_characters_jsonb_cannot_hold_is_journaled(s: Stores) -> None:
    """jsonb cannot hold U+0000; the transcript's items store it as U+FFFD, and so must the
    journal, else the write fails on every attempt and the turn never ends (a journal
    write that fails stops the run as if Postgres were away: the turn is taken over
    again and again without counting, its idempotent tools run each time)."""
    turn, fence = await _running(s, "nul")
    await _write(s, turn, fence, "tool", "call_1", "done", {"output": "a\x00b"})
    await _write(s, turn, fence, "model", "0", "done", {"output": [{"text": "c\x00"}]})
    await _write(s, turn, fence, "tool", "call_2", "done", {"output": "d\ud800e"})
    payloads = [r["payload"] for r in await _steps(s, turn.id)]
    assert payloads == [
        {"output": "a\ufffdb"},
        {"output": [{"text": "c\ufffd"}]},
        {"output": "d?e"},  # a lone surrogate, which is not UTF-8
    ]


# ------------------------------------------------------------------ retention
async def _backdate(s: Stores, turn_id: str, seconds: int, status: str | None = None) -> None:
    await s.execute(
        "UPDATE turns SET finished_at = now() - make_interval(secs => :age), "
        "status = COALESCE(:st, status) WHERE id = :t",
        age=seconds, st=status, t=turn_id,
    )  # fmt: skip


async def _finished_with_steps(s: Stores, key: str, n: int) -> TurnRecord:
    turn, fence = await _running(s, key)
    for i in range(n):
        await _write(s, turn, fence, "model", str(i), "done", {"output": [i]})
    await s.worker.complete(turn, fence, [{"role": "user", "content": "hello"}], "hi", None, 1, 5)
    return turn


async def test_expiry_removes_finished_turns_journals_past_retention_in_bounded_batches(
    s: Stores, database_url: str, uid: str
) -> None:
    old = await _finished_with_steps(s, "old", 3)
    await _backdate(s, old.id, 7200)
    recent = await _finished_with_steps(s, "recent", 1)
    # A running and a waiting turn keep their journals however old their rows (even with
    # a finished_at set): a re-run or a resume replays them.
    running, fence = await _running(s, "running")
    await _write(s, running, fence, "model", "0", "done", {"output": []})
    await _backdate(s, running.id, 7200)
    waiting, fence = await _running(s, "waiting")
    await _write(s, waiting, fence, "model", "0", "done", {"output": []})
    await _backdate(s, waiting.id, 7200, TurnStatus.WAITING.value)
    # another deployment's old finished turn, on the same database
    async with stores_on(database_url, f"elsewhere{uid}:") as other:
        theirs = await _finished_with_steps(other, "theirs", 1)
        await _backdate(other, theirs.id, 7200)

        assert await s.maintenance.expire_journal(3600, 2) == 2  # one bounded batch
        assert len(await _steps(s, old.id)) == 1
        assert await s.maintenance.expire_journal(3600, 2) == 1
        assert await s.maintenance.expire_journal(3600, 2) == 0
        assert await _steps(s, old.id) == []
        for kept in (recent, running, waiting):
            assert len(await _steps(s, kept.id)) == 1, kept
        assert len(await _steps(other, theirs.id)) == 1
