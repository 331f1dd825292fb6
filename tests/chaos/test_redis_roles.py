"""Separated Redis roles under load: the broker or the state server killed and restarted empty.

Celery's queues live on one private redis-server (``TURNQ_BROKER_URL``), the locks, event
streams and marks on another (``TURNQ_REDIS_URL``).  Restarting either one, in turn, while
turns flow must lose, duplicate and reorder nothing (I2-I4): a lost kick is re-sent by the
reaper from Postgres, a lost lock is made harmless by the fence.  The Redis on :6379 is
never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from shared.settings import Settings
from tests.chaos.harness import Cluster, Load, gap, run_under_load, time_limit
from tests.chaos.test_redis_faults import SLOTS, SLOW, RedisStack
from tests.support.servers import PrivateRedis
from tests.system.conftest import FAST_RECOVERY

pytestmark = [pytest.mark.chaos, pytest.mark.system, pytest.mark.timeout(time_limit(240))]


@dataclass
class SplitStack(RedisStack):
    """``redis`` is the broker; ``state`` holds the locks and event streams."""

    state: PrivateRedis


@pytest.fixture(scope="module")
def split(stack_env: dict[str, str]) -> Iterator[SplitStack]:
    with PrivateRedis() as broker, PrivateRedis() as state:
        roles = {"TURNQ_BROKER_URL": broker.url, "TURNQ_REDIS_URL": state.url}
        cluster = Cluster({**stack_env, **FAST_RECOVERY, **SLOW, **roles})
        workers = [cluster.worker(f"split-{n}", concurrency=c) for n, c in SLOTS.items()]
        try:
            cluster.start(*workers, cluster.beat())
            yield SplitStack(
                broker,
                cluster,
                workers,
                Settings(redis_url=state.url, broker_url=broker.url),
                stack_env["TURNQ_DATABASE_URL"],
                state,
            )
        finally:
            cluster.close()


@pytest.mark.parametrize("role", ["broker", "state"])
def test_restart_one_role_under_load(split: SplitStack, uid: str, role: str) -> None:
    server = split.redis if role == "broker" else split.state
    mark = split.log_mark()

    def restart(load: Load) -> None:
        server.kill()  # broker: queued and unacked kicks; state: locks and event streams
        load.keep_going(gap(1.5))
        server.start()  # empty
        load.keep_going(gap(2.0))

    row = run_under_load(
        f"{role} Redis kill+restart (roles split)", split.settings, split.database_url,
        f"split{role}-{uid}", restart, suspects=split.procs,
    )  # fmt: skip
    assert row.failed == 0, row.summary()
    assert split.alive(), "a worker died with one of its Redis servers"
    logs = split.logs_since(mark)
    if role == "broker":  # the consumers lost their queues and came back
        assert "Connection to broker lost" in logs
    else:  # the locks were gone under running drains, new drains retried their lock
        assert "lock heartbeat could not reach Redis" in logs or "ConnectionError" in logs
