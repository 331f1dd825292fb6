"""Beat jobs, worker metrics and worker logs with real beat and worker processes.

* Two beats (one too many) drive retention, the metrics snapshot and the reaper; each
  job still runs once per interval and nothing fails.
* A worker's ``/metrics`` shows its own histograms and counters and the cluster gauges.
* A worker's log lines are JSON, carry turn and session ids, and never the content.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from producer import Client
from shared.settings import get_settings
from shared.status import TurnStatus
from shared.store import Database, ProducerStore, create_engine
from tests.support.servers import free_port
from tests.system.test_pipeline import assert_consistent, wait_for

pytestmark = [pytest.mark.system]

DAY = 86_400


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def run_sql(database_url: str, sql: str, **params: Any) -> Any:
    async def go() -> Any:
        engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            async with engine.begin() as conn:
                result = await conn.execute(text(sql), params)
                return result.scalar() if result.returns_rows else None
        finally:
            await engine.dispose()

    return asyncio.run(go())


def enqueue_without_kick(database_url: str, user: str, key: str, content: str) -> str:
    """A turn Postgres knows about but whose kick never reached Redis (only the reaper helps)."""

    async def go() -> str:
        engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            db = Database(engine, namespace=get_settings().namespace)
            turn, _, _ = await ProducerStore(db).enqueue(user, key, content, None)
            return turn.id
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_beat_jobs_and_worker_metrics(
    start_worker: Any,
    start_beat: Any,
    client: Client,
    stack_env: dict[str, str],
    uid: str,
) -> None:
    db = stack_env["TURNQ_DATABASE_URL"]
    port = free_port()
    env = {
        "TURNQ_SESSION_RETENTION_S": str(3000 * DAY),
        "TURNQ_RETENTION_INTERVAL_S": "1",
        "TURNQ_RETENTION_BATCH_SIZE": "50",
        "TURNQ_RETENTION_MAX_BATCHES": "2",
        "TURNQ_CLUSTER_METRICS_INTERVAL_S": "1",
    }
    old_user, user = f"old-{uid}", f"u-{uid}"
    run_sql(
        db,
        """
        INSERT INTO sessions (id, namespace, user_id, key, created_at, updated_at)
        SELECT gen_random_uuid(), :ns, :u, 'old-' || g, now() - interval '3650 days',
               now() - interval '3650 days'
        FROM generate_series(1, 450) g
        """,
        u=old_user,
        ns=get_settings().namespace,  # the deployment's: retention sweeps only its own
    )
    start_worker(
        "metrics",
        TURNQ_AGENT="tests.agents:slow_echo",
        TEST_MODEL_LATENCY_S="0.2",
        TURNQ_METRICS_PORT=str(port),
        **env,
    )
    start_beat(**env)
    start_beat(**env)  # a second beat by mistake: every job must still run once per interval

    # Retention: 450 idle sessions go, 100 a run (2 batches of 50), and only those.
    wait_for(
        lambda: run_sql(db, "SELECT count(*) FROM sessions WHERE user_id = :u", u=old_user) == 0,
        60,
        "retention never deleted the idle sessions",
    )
    # Turns: a burst on one session (kicks find the lock held) and a turn whose kick was lost.
    session = f"live-{uid}"
    msgs = [f"turn {i}" for i in range(5)]
    turns = [client.enqueue(session, user, m) for m in msgs]
    lost = enqueue_without_kick(db, user, f"lost-{uid}", "my kick never arrived")
    for t in [*(t.id for t in turns), lost]:
        assert client.wait(t, timeout=60).status is TurnStatus.SUCCEEDED
    assert_consistent(client, session, user, msgs)

    def settled() -> dict[Any, float] | None:
        s = scrape(port)
        if value(s, "turnq_turns_by_status", status="succeeded") < 6:
            return None  # the snapshot has not seen our turns yet
        return s

    samples = wait_for(settled, 30, "the cluster snapshot never showed the finished turns")
    assert value(samples, "turnq_sessions_expired_total") >= 450
    assert value(samples, "turnq_beat_jobs_total", job="retention", outcome="ran") >= 5
    assert value(samples, "turnq_beat_jobs_total", job="cluster_metrics", outcome="ran") >= 1
    skipped = sum(
        value(samples, "turnq_beat_jobs_total", job=j, outcome="skipped")
        for j in ("reap", "retention", "cluster_metrics")
    )
    assert skipped >= 1, "two beats, yet no job ever found the other's lock"
    for job in ("reap", "retention", "cluster_metrics"):
        assert value(samples, "turnq_beat_jobs_total", job=job, outcome="failed") == 0
    assert value(samples, "turnq_reaper_recoveries_total") >= 1
    assert value(samples, "turnq_lock_contention_total") >= 1
    for hist in ("turnq_turn_queue_wait_seconds", "turnq_turn_run_seconds", "turnq_model_seconds"):
        assert value(samples, f"{hist}_count") >= 6, hist
    assert value(samples, "turnq_model_seconds_sum") >= 6 * 0.2
    assert value(samples, "turnq_turn_tokens_count", kind="input") >= 6
    assert value(samples, "turnq_turn_tokens_sum", kind="output") == 5 * value(
        samples, "turnq_turn_tokens_count", kind="output"
    )
    assert value(samples, "turnq_turns_total", status="succeeded") >= 6
    for q in ("turns", "summarize", "maintenance"):
        assert ("turnq_queue_depth", (("queue", q),)) in samples
    assert value(samples, "turnq_turns_by_status", status="queued") >= 0
    assert ("turnq_oldest_queued_turn_age_seconds", ()) in samples
    assert ("turnq_sessions_over_budget", ()) in samples
    assert value(samples, "turnq_cluster_snapshot_age_seconds") < 10
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert turns[0].id not in body and user not in body, "an id leaked into a label"


def test_worker_logs_are_json_with_ids_and_never_content(
    start_worker: Any, client: Client, stack_env: dict[str, str], uid: str
) -> None:
    w = start_worker("logs")
    marker = f"CONTENT-MARKER-{uuid.uuid4().hex}"
    session, user = f"logs-{uid}", f"u-{uid}"
    ok = client.enqueue(session, user, f"remember {marker}")
    bad = client.enqueue(session, user, f"FAIL-PERMANENT {marker}")
    assert client.wait(ok.id, timeout=30).status is TurnStatus.SUCCEEDED
    assert client.wait(bad.id, timeout=30).status is TurnStatus.FAILED
    assert marker in (client.get_turn(ok.id).output or "")  # the model did see it

    def turn_events() -> list[dict[str, Any]]:
        lines = w.log_text().splitlines()
        return [
            json.loads(line)
            for line in lines
            if line.startswith("{") and ('"turn finished"' in line or '"turn failed"' in line)
        ]

    wait_for(lambda: len(turn_events()) >= 2, 10, "no turn events in the worker log")
    log = w.log_text()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert len(records) >= 5
    # Every record came through the structured handler: none in Celery's own format.
    assert not [line for line in log.splitlines() if line.startswith("[20")]
    for r in records:
        assert {"ts", "level", "logger", "message", "pid", "host"} <= set(r)

    finished = next(r for r in records if r["message"] == "turn finished")
    failed = next(r for r in records if r["message"] == "turn failed")
    assert finished["turn_id"] == ok.id and failed["turn_id"] == bad.id
    internal_sid = run_sql(
        stack_env["TURNQ_DATABASE_URL"],
        "SELECT session_id::text FROM turns WHERE id = :id",
        id=ok.id,
    )
    assert finished["session_id"] == failed["session_id"] == internal_sid
    assert finished["task_name"] == "turnq.drain" and finished["task_id"]
    assert finished["status"] == "succeeded" and finished["input_tokens"] > 0

    assert marker not in log, "message content reached the worker log"
    assert user not in log
