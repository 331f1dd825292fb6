"""Beat maintenance jobs on real Postgres and Redis: session retention and the metrics snapshot.

The jobs are called as the Celery tasks call them (``workers.maintenance``); the
system tier runs them from a real beat.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import keys
from shared.metrics import ClusterSnapshot, register_cluster_collector
from shared.retention import expire_idle_sessions
from shared.settings import Settings, get_settings
from shared.store import Database, ProducerStore, WorkerStore, create_engine
from tests.conftest import NAMESPACE
from workers.maintenance import expire_sessions, publish_cluster_metrics

pytestmark = [pytest.mark.service, pytest.mark.anyio]

DAY = 86_400.0
OLD_DAYS = 3650  # what the tests make "idle": far older than anything else in the run's DB
RETENTION_S = 3000 * DAY


@pytest.fixture
def ns(stack_env: dict[str, str], uid: str) -> Iterator[str]:
    """A Redis namespace of this test alone (queues, job locks, the snapshot)."""
    namespace = f"{NAMESPACE}m{uid}:"
    os.environ["TURNQ_NAMESPACE"] = namespace
    get_settings.cache_clear()
    yield namespace
    os.environ["TURNQ_NAMESPACE"] = stack_env["TURNQ_NAMESPACE"]
    get_settings.cache_clear()
    client = redis.Redis.from_url(stack_env["TURNQ_REDIS_URL"])
    for key in client.scan_iter(match=f"{namespace}*"):
        client.delete(key)
    client.close()


@pytest.fixture
async def r(stack_env: dict[str, str]) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(stack_env["TURNQ_REDIS_URL"])
    yield client
    await client.aclose()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    e = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    yield e
    await e.dispose()


def settings(**overrides: Any) -> Settings:
    base = {
        "session_retention_s": RETENTION_S,
        "retention_batch_size": 500,
        "retention_max_batches": 2,
    }
    return get_settings().model_copy(update={**base, **overrides})


def producer_store(engine: AsyncEngine) -> ProducerStore:
    """On the test's own namespace (the ``ns`` fixture), which the jobs sweep."""
    return ProducerStore(Database(engine, namespace=get_settings().namespace))


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def bulk_sessions(engine: AsyncEngine, user: str, n: int, days_idle: float) -> None:
    """Sessions with no turns, as the SDK Session protocol creates them."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                """
            INSERT INTO sessions (id, namespace, user_id, key, created_at, updated_at)
            SELECT gen_random_uuid(), :ns, :user, 'bulk-' || g,
                   now() - make_interval(days => :days), now() - make_interval(days => :days)
            FROM generate_series(1, :n) g
            """
            ),
            {"user": user, "n": n, "days": int(days_idle), "ns": get_settings().namespace},
        )


async def age_session(engine: AsyncEngine, session_id: str, days: int = OLD_DAYS) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE sessions SET updated_at = now() - make_interval(days => :d) WHERE id = :id"
            ),
            {"d": days, "id": session_id},
        )


async def finished_session(
    store: ProducerStore, user: str, key: str, status: str = "succeeded"
) -> str:
    """A session created by enqueue whose turns are over, with items in its transcript."""
    turn, _, _ = await store.enqueue(user, key, "hello", None)
    async with store.db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE turns SET status = :st, finished_at = now() WHERE id = :id"),
            {"st": status, "id": turn.id},
        )
        await conn.execute(
            text(
                "INSERT INTO items (session_id, position, turn_id, item) "
                'VALUES (:sid, 0, :tid, \'{"role": "user", "content": "hello"}\')'
            ),
            {"sid": turn.session_id, "tid": turn.id},
        )
    return turn.session_id


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def remaining(engine: AsyncEngine, user: str) -> int:
    return int(await scalar(engine, "SELECT count(*) FROM sessions WHERE user_id = :u", u=user))


# ---------------------------------------------------------------------- retention
async def test_retention_deletes_idle_sessions_in_bounded_batches(
    ns: str, r: aioredis.Redis, engine: AsyncEngine, uid: str
) -> None:
    store = producer_store(engine)
    user = f"ret-{uid}"
    await bulk_sessions(engine, user, 1195, OLD_DAYS)
    done = [await finished_session(store, user, f"done-{i}") for i in range(3)]
    done.append(await finished_session(store, user, "failed", status="failed"))
    done.append(await finished_session(store, user, "cancelled", status="cancelled"))
    for sid in done:
        await age_session(engine, sid)
    queued, _, _ = await store.enqueue(user, "queued", "still waiting", None)
    running, _, _ = await store.enqueue(user, "running", "still running", None)
    claim = await WorkerStore(store.db).claim(running.session_id, None, 3)
    assert claim is not None and claim.turn is not None
    for sid in (queued.session_id, running.session_id):
        await age_session(engine, sid, OLD_DAYS + 1)  # the oldest of all
    recent = await finished_session(store, user, "recent")
    await age_session(engine, recent, 2000)  # idle, but within retention
    assert await remaining(engine, user) == 1203

    first = await expire_sessions(r, engine, settings())
    assert first is not None
    assert (first.deleted, first.batches, first.complete) == (1000, 2, False)
    assert await remaining(engine, user) == 203
    # The job's lock: a second run within the interval (a second beat, a duplicate
    # message) does nothing.
    assert await expire_sessions(r, engine, settings()) is None
    assert await remaining(engine, user) == 203

    rest = await expire_sessions(r, engine, settings(), force=True)
    assert rest is not None and (rest.deleted, rest.complete) == (200, True)
    kept = {
        row[0] for row in await rows(engine, "SELECT key FROM sessions WHERE user_id = :u", u=user)
    }
    assert kept == {"queued", "running", "recent"}
    # Everything of a deleted session went with it.
    for table in ("turns", "items"):
        orphans = await scalar(
            engine,
            f"SELECT count(*) FROM {table} WHERE session_id = ANY(CAST(:ids AS uuid[]))",
            ids=done,
        )
        assert orphans == 0, table
    assert (await store.get_turn(queued.id)) is not None
    await _delete_user(engine, user)


async def test_concurrent_sweeps_never_double_delete(
    ns: str, r: aioredis.Redis, engine: AsyncEngine, uid: str
) -> None:
    user = f"conc-{uid}"
    await bulk_sessions(engine, user, 1000, OLD_DAYS)
    reports = await asyncio.gather(
        *(
            expire_idle_sessions(
                engine, older_than_s=RETENTION_S, batch=40, batches=100, namespace=ns
            )
            for _ in range(5)
        )
    )
    assert sum(rep.deleted for rep in reports) == 1000
    assert sum(1 for rep in reports if rep.deleted) > 1, "the sweeps never overlapped"
    assert await remaining(engine, user) == 0

    # Two job runs at once (two beats): one runs, the other sees the lock.
    await bulk_sessions(engine, user, 300, OLD_DAYS)
    runs = await asyncio.gather(
        expire_sessions(r, engine, settings()), expire_sessions(r, engine, settings())
    )
    assert sorted(run is None for run in runs) == [False, True]
    assert next(run for run in runs if run is not None).deleted == 300


async def test_a_session_locked_by_an_enqueue_is_skipped_not_waited_for(
    ns: str, r: aioredis.Redis, engine: AsyncEngine, uid: str
) -> None:
    user = f"lock-{uid}"
    store = producer_store(engine)
    sid = await finished_session(store, user, "busy")
    await age_session(engine, sid)
    await bulk_sessions(engine, user, 10, OLD_DAYS)
    async with engine.connect() as holder:
        await holder.execute(text("SELECT 1 FROM sessions WHERE id = :id FOR UPDATE"), {"id": sid})
        started = time.monotonic()
        report = await asyncio.wait_for(
            expire_sessions(r, engine, settings(), force=True), timeout=10
        )
        assert time.monotonic() - started < 5
        assert report is not None and report.deleted == 10
        await holder.rollback()
    assert await remaining(engine, user) == 1
    await _delete_user(engine, user)


async def test_retention_off_by_default(ns: str, r: aioredis.Redis, engine: AsyncEngine) -> None:
    assert get_settings().session_retention_s == 0
    assert await expire_sessions(r, engine, get_settings(), force=True) is None


async def _delete_user(engine: AsyncEngine, user: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM sessions WHERE user_id = :u"), {"u": user})


# ---------------------------------------------------------------------- metrics snapshot
async def test_cluster_snapshot_matches_reality_and_is_exposed(
    ns: str, r: aioredis.Redis, engine: AsyncEngine, stack_env: dict[str, str], uid: str
) -> None:
    store = producer_store(engine)
    user = f"met-{uid}"
    registry = CollectorRegistry()
    sync = redis.Redis.from_url(stack_env["TURNQ_REDIS_URL"])
    register_cluster_collector(sync, registry=registry)
    assert registry.get_sample_value("turnq_queue_depth", {"queue": "turns"}) is None, (
        "no snapshot yet: the gauges are absent, not zero"
    )

    # Broker queues: 3 kicks on turns, 2 compactions (one on a priority sub-list).
    for i in range(3):
        await r.lpush(keys.queue(keys.TURNS_QUEUE), f"kick-{i}")
    await r.lpush(keys.queue(keys.SUMMARIZE_QUEUE), "c-0")
    await r.lpush(keys.queue(keys.SUMMARIZE_QUEUE) + "\x06\x163", "c-1")
    # Turns: an old queued one (the oldest queued turn of the database), a fresh one.
    old, _, _ = await store.enqueue(user, "old", "waiting for hours", None)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE turns SET queued_at = now() - interval '10 hours' WHERE id = :id"),
            {"id": old.id},
        )
        await conn.execute(
            text("UPDATE sessions SET context_tokens = 10000000 WHERE id = :id"),
            {"id": old.session_id},
        )
    await store.enqueue(user, "new", "just arrived", None)

    trigger = 96_000
    snap = await publish_cluster_metrics(r, engine, get_settings(), trigger)
    assert snap is not None
    # The snapshot covers this deployment's namespace (the ns fixture) only.
    by_status = dict(
        await rows(
            engine,
            "SELECT t.status, count(*) FROM turns t JOIN sessions s ON s.id = t.session_id "
            "WHERE s.namespace = :ns GROUP BY t.status",
            ns=ns,
        )
    )
    over = await scalar(
        engine,
        "SELECT count(*) FROM sessions WHERE context_tokens > :t AND namespace = :ns",
        t=trigger,
        ns=ns,
    )
    assert dict(snap.queue_depth) == {"turns": 3, "summarize": 2, "maintenance": 0}
    assert dict(snap.turns_by_status) == by_status and by_status["queued"] >= 2
    assert 36_000 <= snap.oldest_queued_turn_age_s < 36_000 + 120
    assert snap.sessions_over_budget == over >= 1

    stored = ClusterSnapshot.from_hash(await r.hgetall(keys.cluster_metrics_key()))
    assert stored == snap
    assert (
        0
        < await r.ttl(keys.cluster_metrics_key())
        <= keys.cluster_metrics_ttl_s(get_settings().cluster_metrics_interval_s)
    )

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("turnq_queue_depth", queue="turns") == 3
    assert sample("turnq_queue_depth", queue="summarize") == 2
    assert sample("turnq_queue_depth", queue="maintenance") == 0
    for status in ("queued", "running", "waiting", "succeeded", "failed", "cancelled"):
        assert sample("turnq_turns_by_status", status=status) == by_status.get(status, 0)
    assert sample("turnq_oldest_queued_turn_age_seconds") == snap.oldest_queued_turn_age_s
    assert sample("turnq_sessions_over_budget") == over
    age = sample("turnq_cluster_snapshot_age_seconds")
    assert age is not None and 0 <= age < 30

    # Once per interval: a second run right away (another beat) leaves it alone.
    assert await publish_cluster_metrics(r, engine, get_settings(), trigger) is None
    # Labels are bounded: no ids anywhere in the exposition.
    from prometheus_client import generate_latest

    exposition = generate_latest(registry).decode()
    assert old.session_id not in exposition and old.id not in exposition and user not in exposition
    sync.close()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE turns SET status = 'cancelled' WHERE session_id IN "
                "(SELECT id FROM sessions WHERE user_id = :u)"
            ),
            {"u": user},
        )
    await _delete_user(engine, user)


async def test_collector_survives_a_dead_redis() -> None:
    registry = CollectorRegistry()
    register_cluster_collector("redis://127.0.0.1:1/0", registry=registry)
    started = time.monotonic()
    assert registry.get_sample_value("turnq_queue_depth", {"queue": "turns"}) is None
    assert time.monotonic() - started < 3
