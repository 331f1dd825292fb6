"""Postgres restarted, or gone for 10 seconds, under load: I3 through a database outage.

Workers, beat and producer use a private Postgres cluster (never the one on :5432).  While
it is down the producer cannot commit, so enqueue fails and nothing is accepted (the load
counts those as rejected); drains in flight fail their statements and are retried; when it
is back the reaper re-kicks whatever is pending and the same worker processes carry on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ops.migrate import upgrade
from ops.processes import ManagedProcess
from shared.settings import Settings
from tests.chaos.harness import Cluster, Load, gap, run_under_load, time_limit
from tests.support.servers import PrivatePostgres
from tests.system.conftest import FAST_RECOVERY

pytestmark = [pytest.mark.chaos, pytest.mark.system, pytest.mark.timeout(time_limit(240))]

SLOW = {"TURNQ_AGENT": "tests.agents:slow_echo", "TEST_MODEL_LATENCY_S": "0.5"}
OUTAGE_S = 10.0


@dataclass
class PgStack:
    pg: PrivatePostgres
    workers: list[ManagedProcess]
    settings: Settings

    def procs(self) -> list[ManagedProcess]:
        return list(self.workers)

    def alive(self) -> bool:
        return all(w.alive() for w in self.workers)


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str]) -> Iterator[PgStack]:
    with PrivatePostgres(database="turnq") as pg:
        upgrade(pg.url)
        cluster = Cluster({**stack_env, **FAST_RECOVERY, **SLOW, "TURNQ_DATABASE_URL": pg.url})
        workers: list[ManagedProcess] = [cluster.worker("p1"), cluster.worker("p2")]
        try:
            cluster.start(*workers, cluster.beat())
            yield PgStack(pg, workers, Settings(database_url=pg.url))
        finally:
            cluster.close()


def test_postgres_restart_under_load(stack: PgStack, uid: str) -> None:
    def restart(load: Load) -> None:
        stack.pg.restart()  # fast shutdown: every connection is dropped
        load.keep_going(gap(2.0))

    row = run_under_load(
        "postgres restart", stack.settings, stack.settings.require_database_url(),
        f"pgrestart-{uid}", restart, suspects=stack.procs,
    )  # fmt: skip
    assert row.failed == 0, row.summary()
    assert stack.alive(), "a worker did not survive the Postgres restart"
    assert row.first_ok_s is not None, "no turn succeeded after the restart"


def test_postgres_10s_outage_under_load(stack: PgStack, uid: str) -> None:
    def outage(load: Load) -> None:
        stack.pg.stop()
        try:
            load.keep_going(gap(OUTAGE_S))  # enqueues fail: rejected, not accepted
        finally:
            stack.pg.start()
        load.keep_going(gap(1.0))

    row = run_under_load(
        f"postgres {OUTAGE_S:.0f}s outage", stack.settings, stack.settings.require_database_url(),
        f"pgdown-{uid}", outage, suspects=stack.procs,
    )  # fmt: skip
    assert row.rejected > 0, "the producer never noticed the outage: the test proved nothing"
    assert row.failed == 0, row.summary()
    assert stack.alive(), "a worker did not survive the Postgres outage"
    assert row.first_ok_s is not None, "no turn succeeded after the outage"
