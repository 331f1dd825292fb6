"""The summarize worker killed (-9) in the middle of a compaction, while chat goes on.

Compaction never takes the session lock and commits by compare-and-swap on the
compaction mark in one transaction (I7, I9), so a summarizer that dies mid-way leaves
nothing behind: no mark moved, no summary, no log row.  Chat turns are unaffected; once
a summarize worker is back, the sessions still over budget are compacted (the next turn
or the reaper asks again).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import pytest

from ops.processes import ManagedProcess
from shared.settings import Settings
from tests.chaos.harness import Cluster, Load, gap, libpq, run_under_load, time_limit
from tests.support.servers import wait_until
from tests.support.workers import WorkerProcess
from tests.system.conftest import FAST_RECOVERY
from tests.system.test_compaction import SMALL_WINDOW, WINDOW

pytestmark = [pytest.mark.chaos, pytest.mark.system, pytest.mark.timeout(time_limit(240))]

SESSIONS = 10
PAD = 1200  # ~300 tokens a message: a session passes the trigger (1,800) in ~5 turns
SLOW_SUMMARY = {"TURNQ_SUMMARIZER": "tests.agents:slow_extractive"}


@dataclass
class Pools:
    cluster: Cluster
    chat: list[ManagedProcess]
    summarizer: ManagedProcess
    database_url: str

    def procs(self) -> list[ManagedProcess]:
        return [*self.chat, self.summarizer]


@pytest.fixture
def pools(stack_env: dict[str, str]) -> Iterator[Pools]:
    cluster = Cluster({**stack_env, **FAST_RECOVERY, **SMALL_WINDOW, **SLOW_SUMMARY})
    chat: list[ManagedProcess] = [cluster.worker("chat1"), cluster.worker("chat2")]
    summarizer = cluster.worker(
        "summarizer", concurrency=4, queues=("summarize",), TEST_SUMMARIZER_LATENCY_S="3"
    )
    try:
        cluster.start(*chat, summarizer, cluster.beat())
        yield Pools(cluster, chat, summarizer, stack_env["TURNQ_DATABASE_URL"])
    finally:
        cluster.close()


def rows(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(database_url)) as conn:
        return conn.execute(sql, params).fetchall()


def compactions_started(proc: ManagedProcess, since: int) -> int:
    return proc.log_text()[since:].count("Task turnq.compact[")


def unfinished_compactions(log: str) -> set[str]:
    """Compact tasks the log shows received but never finished (killed mid-way)."""
    received = set(re.findall(r"Task turnq\.compact\[([0-9a-f-]+)\] received", log))
    ended = set(re.findall(r"Task turnq\.compact\[([0-9a-f-]+)\] (?:succeeded|retry|raised)", log))
    return received - ended


def test_summarizer_killed_mid_compaction_commits_nothing_and_chat_goes_on(
    pools: Pools, uid: str
) -> None:
    user = f"sumkill-{uid}"
    kills: list[datetime] = []

    def kill_mid_compaction(load: Load) -> None:
        victim = pools.summarizer
        seen = len(victim.log_text())
        wait_until(lambda: compactions_started(victim, seen), 60, message="no compaction ran")
        time.sleep(0.5)  # well inside its 3 s summary
        victim.kill()
        kills.append(datetime.now().astimezone())
        assert unfinished_compactions(victim.log_text()), "the kill landed between compactions"
        load.keep_going(gap(2.0))  # chat goes on with no summarizer at all
        # Back, at normal speed: the sessions still over budget get compacted.
        pools.summarizer = pools.cluster.respawn(
            WorkerProcess(
                {**victim.env, "TEST_SUMMARIZER_LATENCY_S": "0.2"},
                name="summarizer",
                concurrency=4,
                queues=("summarize",),
            )
        )
        load.keep_going(gap(1.0))

    row = run_under_load(
        "summarizer kill -9 mid-compaction", Settings(), pools.database_url, user,
        kill_mid_compaction, sessions=SESSIONS, rate=8.0, pad=PAD, suspects=pools.procs,
    )  # fmt: skip
    assert row.failed == 0, row.summary()

    # The killed compaction left nothing: no compaction ran across a kill.
    for kill in kills:
        across = rows(
            pools.database_url,
            "SELECT c.status, c.started_at, c.finished_at FROM compactions c"
            " JOIN sessions s ON s.id = c.session_id"
            " WHERE s.user_id = %s AND c.started_at <= %s AND c.finished_at >= %s",
            user, kill, kill,
        )  # fmt: skip
        assert not across, f"a compaction outlived its killed worker: {across}"
    # Every session over the trigger is compacted once a summarizer is back (the reaper asks
    # for idle ones).  A session the load gave few turns may stay under it: that one needs
    # nothing, but most must have been compacted, or the test proved nothing.
    trigger = int(float(SMALL_WINDOW["TURNQ_COMPACT_TRIGGER"]) * WINDOW)

    def sessions_state() -> list[tuple[int, int]]:
        return [
            (int(n), int(ctx))
            for n, ctx in rows(
                pools.database_url,
                "SELECT compaction_count, context_tokens FROM sessions WHERE user_id = %s",
                user,
            )
        ]

    def settled() -> bool:
        state = sessions_state()
        compacted = sum(n > 0 for n, _ in state)
        return all(n > 0 or ctx <= trigger for n, ctx in state) and compacted >= SESSIONS // 2

    wait_until(
        settled,
        60,
        message="sessions over budget were never compacted after the summarizer came back "
        f"(compaction_count, context_tokens vs trigger {trigger}): {sessions_state()}",
    )
    for session in row.sessions:
        check_compactions(pools.database_url, user, session)


def check_compactions(database_url: str, user: str, session: str) -> None:
    """Marks chain from 0 through succeeded compactions only, and sit on turn boundaries."""
    ((sid, mark, count, summary, items),) = rows(
        database_url,
        "SELECT id, compaction_mark, compaction_count, summary, item_count FROM sessions"
        " WHERE user_id = %s AND key = %s",
        user, session,
    )  # fmt: skip
    done = rows(
        database_url,
        "SELECT old_mark, new_mark FROM compactions WHERE session_id = %s"
        " AND status = 'succeeded' ORDER BY finished_at",
        sid,
    )
    assert len(done) == count, (session, done, count)
    marks = [0] + [new for _, new in done]
    assert [old for old, _ in done] == marks[:-1], f"{session}: marks do not chain: {done}"
    assert marks[-1] == mark and 0 < mark <= items, (session, mark, items)
    assert summary and summary.strip(), f"{session}: compacted without a summary"
    ((first,),) = rows(
        database_url,
        "SELECT item FROM items WHERE session_id = %s AND position = %s",
        sid, mark,
    )  # fmt: skip
    assert first.get("role") == "user", f"{session}: the mark splits a turn: {first}"
