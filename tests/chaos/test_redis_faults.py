"""Redis restarted, flushed, or its connections cut, under load: I3/I4 with Redis as transport.

A private redis-server serves the workers, beat and producer (through a TCP proxy that cuts
links, for the dropped-connection test).  Redis only
carries kicks, locks and events: Postgres knows every turn, so a lost kick or lock delays a
turn until the reaper re-kicks it, and a lost lock under a running turn is made harmless by
the fence.  The Redis on :6379 is never touched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ops.processes import ManagedProcess
from producer import Client
from shared.settings import Settings
from shared.status import TurnStatus
from tests.chaos.harness import Cluster, Load, gap, run_under_load, time_limit
from tests.support.servers import PrivateRedis, TcpProxy, wait_until
from tests.support.workers import WorkerProcess
from tests.system.conftest import FAST_RECOVERY

pytestmark = [pytest.mark.chaos, pytest.mark.system, pytest.mark.timeout(time_limit(240))]

SLOW = {"TURNQ_AGENT": "tests.agents:slow_echo", "TEST_MODEL_LATENCY_S": "0.6"}
# Few slots for 30 sessions at 12 turns/s (9 drains of 0.6 s: ~80% busy): kicks wait in
# Redis, so a restart or a flush really loses some and only the reaper recovers them; and
# the roomier worker has a read of the queue in flight when Redis goes (workers/broker.py).
SLOTS = {"r1": 3, "r2": 20}


@dataclass
class RedisStack:
    redis: PrivateRedis
    cluster: Cluster
    workers: list[WorkerProcess]
    settings: Settings
    database_url: str

    def alive(self) -> bool:
        return all(w.alive() for w in self.workers)

    def procs(self) -> list[ManagedProcess]:
        return list(self.workers)

    def log_mark(self) -> list[int]:
        return [len(w.log_text()) for w in self.workers]

    def logs_since(self, mark: list[int]) -> str:
        return "".join(w.log_text()[n:] for w, n in zip(self.workers, mark, strict=True))


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str]) -> Iterator[RedisStack]:
    """Workers, beat and producer straight on the private Redis (a restart refuses them)."""
    with PrivateRedis() as redis:
        cluster = Cluster({**stack_env, **FAST_RECOVERY, **SLOW, "TURNQ_REDIS_URL": redis.url})
        workers = [cluster.worker(n, concurrency=c) for n, c in SLOTS.items()]
        try:
            cluster.start(*workers, cluster.beat())
            yield RedisStack(
                redis,
                cluster,
                workers,
                Settings(redis_url=redis.url),
                stack_env["TURNQ_DATABASE_URL"],
            )
        finally:
            cluster.close()


def test_worker_survives_redis_dying_under_running_turns(stack: RedisStack, uid: str) -> None:
    """The deterministic case of workers/broker.py: turns running, a queue read in flight."""
    user = f"rdie-{uid}"
    with Client.from_settings(stack.settings) as client:
        turns = [client.enqueue(f"die{i}-{uid}", user, f"turn {i}") for i in range(8)]
        wait_until(
            lambda: sum(client.get_turn(t.id).status is TurnStatus.RUNNING for t in turns) >= 3,
            30,
            message="the turns never ran",
        )
        stack.redis.kill()
        time.sleep(1.0)
        stack.redis.start()
        for t in turns:
            assert client.wait(t.id, timeout=60).status is TurnStatus.SUCCEEDED
    assert stack.alive(), "a worker died with its broker connection (see workers/broker.py)"


def test_redis_restart_under_load(stack: RedisStack, uid: str) -> None:
    mark = stack.log_mark()

    def restart(load: Load) -> None:
        stack.redis.kill()  # kicks, locks, unacked messages, events: gone
        load.keep_going(gap(1.5))  # enqueues commit; their kicks fail (the reaper's job)
        stack.redis.start()  # empty
        load.keep_going(gap(2.0))

    row = run_under_load(
        "redis kill+restart", stack.settings, stack.database_url, f"rrestart-{uid}", restart,
        suspects=stack.procs,
    )  # fmt: skip
    assert row.failed == 0, row.summary()
    assert stack.alive(), "a worker died with its broker connection (see workers/broker.py)"
    logs = stack.logs_since(mark)
    assert "Connection to broker lost" in logs  # the fault reached the workers
    assert "reaper re-kicked sessions" in logs  # and the lost kicks were recovered


def test_redis_flushall_under_load(stack: RedisStack, uid: str) -> None:
    mark = stack.log_mark()

    def flush(load: Load) -> None:
        # Freeze the workers (for less than the lock TTL) so kicks pile up in Redis: the
        # flush then takes queued kicks as well as locks and unacked messages.
        for w in stack.workers:
            w.pause()
        try:
            load.keep_going(1.0)
            stack.redis.flushall()
        finally:
            for w in stack.workers:
                w.resume()
        load.keep_going(gap(1.5))

    row = run_under_load(
        "redis FLUSHALL", stack.settings, stack.database_url, f"rflush-{uid}", flush, times=2,
        suspects=stack.procs,
    )  # fmt: skip
    assert row.failed == 0, row.summary()
    assert stack.alive()
    assert "reaper re-kicked sessions" in stack.logs_since(mark)  # flushed kicks recovered


def test_redis_connections_cut_under_load(stack: RedisStack, uid: str) -> None:
    """Two more workers and the producer reach Redis through a proxy that drops every link."""
    with TcpProxy("127.0.0.1", stack.redis.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        proxied = [
            stack.cluster.worker(f"{n}p", concurrency=c, TURNQ_REDIS_URL=url)
            for n, c in SLOTS.items()
        ]
        for w in stack.workers:  # only the proxied workers take turns in this test
            w.stop()
        stack.cluster.start(*proxied)
        stack.workers = proxied

        def cut(load: Load) -> None:
            assert proxy.link_count > 0, "nothing connects through the proxy"
            proxy.cut()
            load.keep_going(gap(1.0))

        settings = Settings(redis_url=url)
        row = run_under_load(
            "redis links cut", settings, stack.database_url, f"rcut-{uid}", cut, times=3,
            suspects=stack.procs,
        )  # fmt: skip
        assert row.failed == 0, row.summary()
        assert stack.alive()
