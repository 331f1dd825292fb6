"""Turn workers killed (-9) or frozen (SIGSTOP past the lock TTL) under load: I1-I4.

Two turn workers share the load; one of them is the victim.  A killed worker's turns are
re-run by the other after its lock expires (the reaper re-kicks them); a frozen worker's
lock expires under it, the session moves on, and when it wakes its write is refused by
the fence.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ops.processes import ManagedProcess
from shared.settings import Settings
from tests.chaos.harness import Cluster, Load, gap, run_under_load, running_turns, time_limit
from tests.support.servers import wait_until
from tests.system.conftest import FAST_RECOVERY

pytestmark = [pytest.mark.chaos, pytest.mark.system, pytest.mark.timeout(time_limit(240))]

SLOW = {"TURNQ_AGENT": "tests.agents:slow_echo", "TEST_MODEL_LATENCY_S": "0.8"}


@dataclass
class Workers:
    cluster: Cluster
    steady: ManagedProcess
    victim: ManagedProcess
    database_url: str

    def procs(self) -> list[ManagedProcess]:
        return [self.steady, self.victim]


@pytest.fixture(scope="module")
def workers(stack_env: dict[str, str]) -> Iterator[Workers]:
    cluster = Cluster({**stack_env, **FAST_RECOVERY, **SLOW})
    steady, victim, beat = cluster.worker("steady"), cluster.worker("victim"), cluster.beat()
    try:
        cluster.start(steady, victim, beat)
        yield Workers(cluster, steady, victim, stack_env["TURNQ_DATABASE_URL"])
    finally:
        cluster.close()


def test_kill_9_of_a_worker_mid_turn_repeatedly(workers: Workers, uid: str) -> None:
    user = f"kill-{uid}"

    def kill(load: Load) -> None:
        wait_until(lambda: running_turns(workers.database_url, user), 30, message="idle")
        workers.victim.kill()
        load.keep_going(gap(0.5))
        workers.victim = workers.cluster.respawn(workers.victim)
        load.keep_going(gap(1.0))

    row = run_under_load(
        "worker kill -9", Settings(), workers.database_url, user, kill, times=3,
        suspects=workers.procs,
    )  # fmt: skip
    assert row.failed == 0, row.summary()  # a kill is not a reason to fail a turn
    assert row.retried > 0, "no kill landed mid-turn: the test proved nothing"
    assert workers.steady.alive() and workers.victim.alive()


def test_sigstop_past_the_lock_ttl_then_sigcont_is_fenced(workers: Workers, uid: str) -> None:
    user = f"stop-{uid}"
    ttl = float(FAST_RECOVERY["TURNQ_LOCK_TTL_S"])
    victim = workers.victim
    log_before = len(victim.log_text())

    def freeze(load: Load) -> None:
        wait_until(lambda: running_turns(workers.database_url, user), 30, message="idle")
        victim.pause()  # heartbeats stop; its locks expire; the reaper re-kicks
        try:
            load.keep_going(gap(2 * ttl + 1))
        finally:
            victim.resume()
        load.keep_going(gap(1.0))

    row = run_under_load(
        "worker SIGSTOP > lock TTL", Settings(), workers.database_url, user, freeze
    )
    assert row.failed == 0, row.summary()
    assert row.retried > 0, "the frozen worker held no turn: the test proved nothing"
    # The stale worker noticed: its heartbeat found the lock gone, or its commit was refused.
    woke = victim.log_text()[log_before:]
    assert "fenced out" in woke or "lock lost" in woke, woke[-3000:]
    assert victim.alive() and workers.steady.alive()
