"""A holder takes a turn only while Redis confirms its lock (real Redis and Postgres).

A worker woken from a pause past the lock TTL runs its overdue callbacks in any order.
When a drain's commit ran before its heartbeat, the commit's claim of the session's next
turn went through (the fence was still the drain's) although the lock had expired and
another worker had locked the session meanwhile; that worker's claim then took the turn
over at once: a re-run no fault explains (tests/chaos/test_attempts_under_faults.py,
about one run in three).  The woken drain must commit its own turn (fenced, so safe) and
claim nothing more; the new holder runs the rest.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared import locks
from shared.locks import SessionLock
from shared.settings import get_settings
from shared.status import TurnStatus
from shared.store import WorkerStore
from tests.support.stores import Stores, stores_on
from workers import turn as turn_module
from workers.execute import Finished
from workers.streaming import Publisher

pytestmark = [pytest.mark.service, pytest.mark.anyio]


@pytest.fixture
async def redis_client(stack_env: dict[str, str]) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(stack_env["TURNQ_REDIS_URL"])
    yield client
    await client.aclose()


@pytest.fixture
async def s(database_url: str) -> AsyncIterator[Stores]:
    async with stores_on(database_url) as stores:
        yield stores


def _runtime(s: Stores, redis_client: aioredis.Redis) -> Any:
    """What ``drain`` uses of a worker's Runtime; the turns themselves are patched."""
    return SimpleNamespace(
        settings=get_settings(),
        redis=redis_client,
        publisher=Publisher(redis_client, get_settings()),
        turns=WorkerStore(s.db),
        policy=SimpleNamespace(trigger_tokens=10**9),
        registry=SimpleNamespace(default="echo"),
        stopping=False,
    )


async def _instant(rt: Any, turn: Any, context: Any, outbox: Any, fence: int) -> Finished:
    usage = {"input_tokens": 0, "output_tokens": 0}
    return Finished(
        [{"role": "assistant", "content": "done"}], "done", None, "echo", usage, 0, False
    )


class _Clock:
    """``time.monotonic`` for shared.locks, able to jump as a frozen process sees it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


async def test_a_woken_holder_commits_its_turn_but_claims_no_more(
    s: Stores, redis_client: aioredis.Redis, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = get_settings()  # lock TTL 30 s: no heartbeat fires during the test
    first, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "one", None)
    second, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "two", None)
    sid = first.session_id
    clock = _Clock()
    monkeypatch.setattr(locks, "time", clock)
    other = SessionLock(redis_client, sid, settings.lock_ttl_s)

    async def paused_past_the_ttl(
        rt: Any, turn: Any, context: Any, outbox: Any, fence: int
    ) -> Finished:
        clock.offset += settings.lock_ttl_s + 1  # the process was stopped this long ...
        await redis_client.delete(other.key)  # ... its key expired ...
        assert await other.acquire()  # ... and another worker locked the session
        done = [{"role": "assistant", "content": "done"}]
        usage = {"input_tokens": 0, "output_tokens": 0}
        return Finished(done, "done", None, "echo", usage, 0, False)

    monkeypatch.setattr(turn_module, "execute", paused_past_the_ttl)
    ran = await turn_module.drain(_runtime(s, redis_client), sid)

    assert ran == 1
    done = await s.producer.get_turn(first.id)
    assert done is not None and done.status is TurnStatus.SUCCEEDED  # its fence still held
    waiting = await s.producer.get_turn(second.id)
    assert waiting is not None
    assert (waiting.status, waiting.attempts) == (TurnStatus.QUEUED, 0)  # the new holder's
    assert await other.holder() == other.token  # left alone
    await other.release()


async def test_still_held_renews_a_stale_lock_that_is_ours_and_refuses_a_lost_one(
    redis_client: aioredis.Redis, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(locks, "time", clock)
    lock = SessionLock(redis_client, uid, ttl_s=30)
    assert not lock.fresh()  # never confirmed
    assert await lock.acquire()
    assert lock.fresh() and await lock.still_held()
    clock.offset += 25  # no confirmation for longer than ttl - heartbeat (20 s)
    assert not lock.fresh()
    assert await lock.still_held()  # Redis still has our token: confirmed again
    assert lock.fresh()
    clock.offset += 25
    await redis_client.delete(lock.key)  # expired meanwhile
    assert not await lock.still_held()  # not taken back here (the heartbeat checks the fence)
    assert await lock.holder() is None


# Where a new turn's enqueue and kick land relative to the holder's end of the drain.
KICK_POINTS = ("after_the_last_commit", "before_release", "after_release")


@pytest.mark.parametrize("point", KICK_POINTS)
@pytest.mark.parametrize("mark", ["kept", "control_without_the_mark"])
async def test_a_turn_kicked_at_any_point_of_a_drains_end_is_run(
    s: Stores, redis_client: aioredis.Redis, uid: str, monkeypatch: pytest.MonkeyPatch,
    point: str, mark: str,
) -> None:  # fmt: skip
    """The drain skips its last look in Postgres when its release found no kick mark
    (decision 0012).  A turn enqueued and kicked at each point where the holder ends must
    still run at once: the kick's acquire either marks the held lock (the holder looks
    again) or finds it free (and runs the turn itself).  The control drops the mark from
    the acquire script: the turn kicked while the lock was held is then left queued."""
    if mark == "control_without_the_mark":
        monkeypatch.setattr(
            locks,
            "ACQUIRE",
            locks.Script(
                'return redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) and 1 or 0'
            ),
        )
    first, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "one", None)
    sid = first.session_id
    rt = _runtime(s, redis_client)
    monkeypatch.setattr(turn_module, "execute", _instant)
    late: list[str] = []

    async def enqueue_and_kick(at: str) -> None:
        if at == point and not late:
            turn, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "late", None)
            late.append(turn.id)
            await turn_module.drain(rt, sid)  # the kick: another worker's drain

    complete, release = WorkerStore.complete, SessionLock.release

    async def completing(self: WorkerStore, *args: Any, **kw: Any) -> Any:
        done = await complete(self, *args, **kw)
        await enqueue_and_kick("after_the_last_commit")
        return done

    async def releasing(self: SessionLock) -> bool:
        await enqueue_and_kick("before_release")
        released = await release(self)
        await enqueue_and_kick("after_release")
        return released

    monkeypatch.setattr(WorkerStore, "complete", completing)
    monkeypatch.setattr(SessionLock, "release", releasing)
    await turn_module.drain(rt, sid)

    assert late, "the hook never ran"
    turn = await s.producer.get_turn(late[0])
    assert turn is not None
    kicked_while_held = point != "after_release"
    if mark == "kept" or not kicked_while_held:
        assert turn.status is TurnStatus.SUCCEEDED
    else:
        assert turn.status is TurnStatus.QUEUED  # the mark is what makes the holder look
