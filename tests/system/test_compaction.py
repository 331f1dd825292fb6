"""Context budget and compaction with real workers: I7 (never blocks chat), I8 (never over
the window), I9 (nothing forgotten: the transcript stays whole)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from producer import Client
from shared.status import TurnStatus
from tests.support.servers import free_port
from tests.support.workers import WorkerProcess
from tests.system.test_pipeline import assert_consistent, wait_for

pytestmark = pytest.mark.system

WINDOW = 3000
RESERVE = 300
SMALL_WINDOW = {
    "TURNQ_AGENT": "shared.demo_agent:build_agent",
    "TURNQ_MODEL_PROVIDER": "offline",
    "TURNQ_CONTEXT_WINDOW_TOKENS": str(WINDOW),
    "TURNQ_COMPACT_TRIGGER": "0.6",
    "TURNQ_COMPACT_TARGET": "0.3",
    "TURNQ_SUMMARY_MAX_TOKENS": "400",
    "TURNQ_RESERVE_OUTPUT_TOKENS": str(RESERVE),
}
CITIES = ["Austin", "Seattle", "Paris", "London", "Tokyo"]


def chat_line(i: int) -> str:
    if i % 3 == 0:
        return f"What is the weather in {CITIES[i % len(CITIES)]}?"
    return f"Here is note number {i}: the meeting moved to room {100 + i}, bring the slides."


def start_pools(
    start_worker: Any, start_beat: Any, summarizer_env: dict[str, str] | None = None, **env: str
) -> tuple[WorkerProcess, WorkerProcess]:
    chat = start_worker("chat", **SMALL_WINDOW, **env)
    summarizer = WorkerProcess(
        {**chat.env, **SMALL_WINDOW, **env, **(summarizer_env or {})},
        name="summarizer",
        concurrency=4,
        queues=("summarize",),
    )
    summarizer.start()
    start_beat(**SMALL_WINDOW, **env)
    return chat, summarizer


def db_rows(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.mark.parametrize("strategy", ["summarize", "hybrid"])
def test_300_turns_never_exceed_the_window_and_remember_turn_3(
    client: Client, start_worker: Any, start_beat: Any, stack_env: dict[str, str], uid: str,
    strategy: str,
) -> None:  # fmt: skip
    chat, summarizer = start_pools(start_worker, start_beat, TURNQ_COMPACTION_STRATEGY=strategy)
    try:
        session, user = f"long-{strategy}-{uid}", f"u-{uid}"
        script = ["Hello there", "What is the weather in Austin?", "My name is Ada"]
        script += [chat_line(i) for i in range(3, 299)] + ["What is my name?"]
        results = []
        for message in script:
            results.append(client.wait(client.enqueue(session, user, message).id, timeout=60))
        assert all(r.status is TurnStatus.SUCCEEDED for r in results), [
            r.error for r in results if r.error
        ]
        assert "Ada" in (results[-1].output or ""), results[-1].output
        # I8: no model call was ever sent more than the window allows.
        largest = max(r.usage["max_input_tokens"] for r in results if r.usage)
        assert largest <= WINDOW - RESERVE, largest
        # Compaction ran, on the summarize queue's pool only.
        s = client.session(session, user)
        assert s.compaction_count > 0 and s.compaction_mark > 0
        assert "Task turnq.compact[" in summarizer.log_text()
        assert "Task turnq.compact[" not in chat.log_text()
        assert "Task turnq.drain[" not in summarizer.log_text()
        # I9: the transcript is whole and in order.
        assert_consistent(client, session, user, script)
        shown = subprocess.run(
            [sys.executable, "-m", "producer.cli", "sessions", "show", session, "--user", user],
            env={**os.environ, **stack_env, **SMALL_WINDOW, "COLUMNS": "200"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        # The summarizer may compact again meanwhile: the mark shown lies between two reads.
        shown_mark = re.search(r"compaction mark: position (\d+)", shown.stdout)
        assert shown_mark is not None, shown.stdout
        later = client.session(session, user)
        assert s.compaction_mark <= int(shown_mark.group(1)) <= later.compaction_mark
        # ... its context between the two reads' (no turn ran: compaction only shrinks it)
        shown_context = re.search(r"context ~([\d,]+) tokens", shown.stdout)
        assert shown_context is not None, shown.stdout
        tokens = int(shown_context.group(1).replace(",", ""))
        assert later.context_tokens <= tokens <= s.context_tokens
        assert "recent compactions" in shown.stdout and "succeeded" in shown.stdout
        assert any((r.summary or "").splitlines()[0] in shown.stdout for r in (s, later))
        if strategy == "hybrid":
            assert s.summary_items, "hybrid keeps looked-up tool results verbatim"
            warmer = client.wait(client.enqueue(session, user, "Which city is warmer?").id, 30)
            assert "warmer" in (warmer.output or ""), warmer.output
    finally:
        summarizer.stop()


def test_compactions_commit_while_turns_run_nothing_lost_or_reordered(
    client: Client, start_worker: Any, start_beat: Any, stack_env: dict[str, str], uid: str
) -> None:
    _, summarizer = start_pools(
        start_worker,
        start_beat,
        TURNQ_SUMMARIZER="tests.agents:slow_extractive",
        TEST_SUMMARIZER_LATENCY_S="0.2",
    )
    try:
        user = f"u-{uid}"
        plan = {f"cc{i}-{uid}": [chat_line(j) for j in range(40)] for i in range(6)}

        def run_session(session: str) -> None:
            for message in plan[session]:
                turn = client.enqueue(session, user, message)
                assert client.wait(turn.id, timeout=60).status is TurnStatus.SUCCEEDED

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(run_session, plan))
        overlapped = 0
        for session, messages in plan.items():
            assert_consistent(client, session, user, messages)  # nothing lost, doubled, reordered
            s = client.session(session, user)
            assert s.compaction_count > 0
            # The mark always sits on a turn boundary: the item there is a user message.
            history = client.history(session, user)
            assert history[s.compaction_mark].get("role") == "user"
            turns = client.turns(session, user)
            for c in client.compactions(session, user):
                if c["status"] != "succeeded":
                    continue
                overlapped += any(
                    t.started_at and t.finished_at
                    and t.started_at < c["finished_at"] and t.finished_at > c["started_at"]
                    for t in turns
                )  # fmt: skip
        assert overlapped > 0, "no compaction ran while a turn of its session ran"
    finally:
        summarizer.stop()


@pytest.mark.parametrize(
    "broken", ["tests.agents:BrokenSummarizer", "tests.agents:EmptySummarizer"]
)
def test_failed_or_empty_summary_commits_nothing(
    client: Client, start_worker: Any, start_beat: Any, stack_env: dict[str, str], uid: str,
    broken: str,
) -> None:  # fmt: skip
    port = free_port()
    _, summarizer = start_pools(
        start_worker, start_beat, {"TURNQ_METRICS_PORT": str(port)}, TURNQ_SUMMARIZER=broken
    )
    try:
        session, user = f"broken-{uid}", f"u-{uid}"
        messages = ["My name is Ada", *(chat_line(i) for i in range(1, 40))]
        for m in messages:
            assert client.wait(client.enqueue(session, user, m).id, 60).status is (
                TurnStatus.SUCCEEDED
            )
        sid = client.session(session, user).id
        failed = wait_for(
            lambda: db_rows(
                stack_env["TURNQ_DATABASE_URL"],
                "SELECT error FROM compactions WHERE session_id = %s AND status = 'failed'",
                sid,
            ),
            60,
            "no failed compaction was recorded",
        )
        assert all(row[0] for row in failed)  # each failure says why
        s = client.session(session, user)
        assert s.summary is None and s.compaction_mark == 0 and s.compaction_count == 0
        assert not db_rows(
            stack_env["TURNQ_DATABASE_URL"],
            "SELECT 1 FROM compactions WHERE session_id = %s AND status = 'succeeded'",
            sid,
        )
        assert "compaction failed" in summarizer.log_text()
        exposed = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        failed_metric = [
            line for line in exposed.splitlines()
            if line.startswith("turnq_compactions_total") and 'status="failed"' in line
        ]  # fmt: skip
        assert failed_metric and float(failed_metric[0].split()[-1]) >= 1, exposed[-2000:]
        # Chat kept working within the window by trimming in memory.
        last = client.turns(session, user)[-1]
        assert last.usage and last.usage["max_input_tokens"] <= WINDOW - RESERVE
        assert last.usage["trimmed"] is True
        assert_consistent(client, session, user, messages)
    finally:
        summarizer.stop()
