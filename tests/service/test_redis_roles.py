"""Two Redis roles on two real servers: the broker (TURNQ_BROKER_URL) and the state.

Producers push kicks to the broker and write events to the state server; the metrics job
reads queue depths on the broker and writes its snapshot to the state server; the health
probe checks both.  Each server is a private redis-server; Postgres is the run's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from producer import AsyncClient
from shared import keys
from shared.health import run_checks
from shared.settings import Settings
from shared.store import create_engine
from tests.support.servers import PrivateRedis
from workers.maintenance import publish_cluster_metrics

pytestmark = [pytest.mark.service, pytest.mark.anyio]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[PrivateRedis, PrivateRedis]]:
    with PrivateRedis() as broker, PrivateRedis() as state:
        yield broker, state


@pytest.fixture
def split(stack_env: dict[str, str], servers: tuple[PrivateRedis, PrivateRedis]) -> Settings:
    broker, state = servers
    for server in servers:
        server.flushall()
    return Settings(
        redis_url=state.url,
        broker_url=broker.url,
        database_url=stack_env["TURNQ_DATABASE_URL"],
        namespace=stack_env["TURNQ_NAMESPACE"],
    )


@pytest.fixture
async def clients(
    servers: tuple[PrivateRedis, PrivateRedis],
) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    broker = aioredis.Redis.from_url(servers[0].url, decode_responses=True)
    state = aioredis.Redis.from_url(servers[1].url, decode_responses=True)
    yield broker, state
    await broker.aclose()
    await state.aclose()


def test_one_server_by_default() -> None:
    one = Settings(redis_url="redis://127.0.0.1:1/0")
    assert one.broker == one.redis_url and not one.separate_broker
    same = Settings(redis_url="redis://127.0.0.1:1/0", broker_url="redis://127.0.0.1:1/0")
    assert not same.separate_broker
    two = Settings(redis_url="redis://127.0.0.1:1/0", broker_url="redis://127.0.0.1:2/0")
    assert two.separate_broker and two.require_broker_url().endswith(":2/0")


async def test_kicks_go_to_the_broker_and_events_to_the_state_server(
    split: Settings, clients: tuple[aioredis.Redis, aioredis.Redis], uid: str
) -> None:
    broker, state = clients
    turns = keys.queue(keys.TURNS_QUEUE, split.namespace)
    async with AsyncClient.from_settings(split) as client:
        first = await client.enqueue(f"roles-{uid}", f"u-{uid}", "first")
        second = await client.enqueue(f"roles-{uid}", f"u-{uid}", "second")
        assert await broker.llen(turns) == 2 and not await state.exists(turns)
        await client.cancel(second.id, f"u-{uid}")  # queued: announced on its event stream
    stream = keys.events_key(second.id, split.namespace)
    assert await state.xlen(stream) == 1 and not await broker.exists(stream)
    assert not await broker.exists(keys.events_key(first.id, split.namespace))
    assert [k async for k in broker.scan_iter(match=f"{split.namespace}turnq:*")] == []


async def test_queue_depths_are_read_on_the_broker(
    split: Settings, clients: tuple[aioredis.Redis, aioredis.Redis], database_url: str
) -> None:
    broker, state = clients
    for _ in range(3):
        await broker.lpush(keys.queue(keys.TURNS_QUEUE, split.namespace), "kick")
    engine = create_engine(database_url)
    try:
        snap = await publish_cluster_metrics(state, engine, split, 10**9, broker=broker, force=True)
    finally:
        await engine.dispose()
    assert snap is not None and snap.queue_depth["turns"] == 3
    assert await state.exists(keys.cluster_metrics_key(split.namespace))
    assert not await broker.exists(keys.cluster_metrics_key(split.namespace))


def test_health_checks_both_servers(split: Settings, servers: Any) -> None:
    names = {c.name: c.ok for c in run_checks(split, "worker", "readiness", 5.0)}
    assert names == {"redis": True, "broker": True, "postgres": True}
    broker, _ = servers
    broker.stop()
    try:
        names = {c.name: c.ok for c in run_checks(split, "worker", "readiness", 5.0)}
        assert names == {"redis": True, "broker": False, "postgres": True}
    finally:
        broker.start()
