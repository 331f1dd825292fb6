"""The chaos checker itself: it must count what the invariants forbid, or it proves nothing."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest

from producer import Client
from shared.settings import Settings
from tests.chaos.executions import ExecutionLog, Fault, attempts_check
from tests.chaos.harness import Accepted, Load, check, libpq

pytestmark = [pytest.mark.chaos, pytest.mark.service]


def test_checker_counts_lost_duplicated_and_reordered_turns(
    stack_env: dict[str, str], database_url: str, uid: str
) -> None:
    user = f"selftest-{uid}"
    load = Load(Settings(), user, sessions=2)
    s0, s1 = load.sessions
    with Client.from_settings() as client:  # no worker runs: statuses are set by hand below
        plan = [(s0, "s0 msg 0"), (s0, "s0 msg 1"), (s1, "s1 msg 0"), (s1, "s1 msg 1")]
        turns = [client.enqueue(s, user, c) for s, c in plan]
    load.accepted = [
        Accepted(t.id, s, c, order, time.time())
        for (s, c), t, order in zip(plan, turns, [0, 1, 0, 1], strict=True)
    ]
    load.stopped_at = time.time()

    def item(role: str, text: str) -> str:
        return json.dumps({"role": role, "content": text})

    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        find = "SELECT id FROM sessions WHERE user_id = %s AND key = %s"
        sid0 = conn.execute(find, (user, s0)).fetchone()
        sid1 = conn.execute(find, (user, s1)).fetchone()
        assert sid0 and sid1
        done = "UPDATE turns SET status='succeeded', output=%s, finished_at=now() WHERE id=%s"
        add = "INSERT INTO items (session_id, position, turn_id, item) VALUES (%s, %s, %s, %s)"
        # s0: turn 0 succeeded but its items were written twice; turn 1 never finished (lost).
        conn.execute(done, ("a0", turns[0].id))
        for pos in (0, 2):
            conn.execute(add, (sid0[0], pos, turns[0].id, item("user", "s0 msg 0")))
            conn.execute(add, (sid0[0], pos + 1, turns[0].id, item("assistant", "a0")))
        # s1: both succeeded, but the second turn's items come first (reordered).
        for n, (tid, pos) in enumerate([(turns[2].id, 2), (turns[3].id, 0)]):
            conn.execute(done, (f"b{n}", tid))
            conn.execute(add, (sid1[0], pos, tid, item("user", f"s1 msg {n}")))
            conn.execute(add, (sid1[0], pos + 1, tid, item("assistant", f"b{n}")))
    row = check(load, "self-test", database_url, None, timeout=0.5, record=False)
    assert row.lost == 1, row.violations
    assert row.duplicated >= 1, row.violations
    assert row.out_of_order >= 1, row.violations
    assert not row.clean


def test_attempts_checker_blames_re_runs_no_fault_explains(
    stack_env: dict[str, str], database_url: str, uid: str
) -> None:
    """A turn run twice is fine if a fault hit its first run's worker mid-turn, not else;
    a failed turn needs as many kills as the attempt budget."""
    user = f"attempts-selftest-{uid}"
    with Client.from_settings() as client:  # no worker runs: executions are made by hand
        hit, churned, failed = (client.enqueue(f"s{n}-{uid}", user, "hi") for n in range(3))

    def run(conn: psycopg.Connection[Any], worker: str, turn_id: str) -> None:
        conn.execute("SELECT set_config('application_name', %s, false)", (worker,))
        conn.execute(
            "UPDATE turns SET status = 'running', attempts = attempts + 1,"
            " started_at = clock_timestamp() WHERE id = %s",
            (turn_id,),
        )

    with ExecutionLog(database_url) as log:
        with psycopg.connect(libpq(database_url), autocommit=True) as conn:
            for t in (hit, churned, failed):
                run(conn, "w-0", t.id)
            time.sleep(0.01)
            kill = Fault.kill("w-0", lambda: None)  # w-0 died with all three running
            for t in (hit, failed):
                run(conn, "w-1", t.id)
            run(conn, "w-0", churned.id)  # w-0 cannot run again: w-1 never ran it: churn
            run(conn, "w-1", churned.id)
            for t, status in ((hit, "succeeded"), (churned, "succeeded"), (failed, "failed")):
                conn.execute(
                    "UPDATE turns SET status = %s, error = 'x', finished_at = clock_timestamp()"
                    " WHERE id = %s",
                    (status, t.id),
                )
        clean = attempts_check(log, user, [], max_attempts=2)
        assert clean.over == 3 and clean.failed_unexplained == 1, clean.summary()
        report = attempts_check(log, user, [kill], max_attempts=2)
    assert report.hit == 3 and report.max_attempts == 3, report.summary()
    assert report.over == 1 and "s1-" in report.violations[0], report.summary()
    assert report.failed_unexplained == 1, report.summary()  # one kill < budget of 2
