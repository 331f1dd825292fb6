"""The turn pipeline with real worker processes: order, exclusion, recovery (I1-I6)."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from producer import Client
from shared import keys
from shared.status import TurnStatus
from tests.support.servers import wait_until
from tests.support.workers import WorkerProcess

pytestmark = [__import__("pytest").mark.system]


def wait_for(predicate: Any, timeout: float, message: str, interval: float = 0.05) -> Any:
    return wait_until(predicate, timeout, interval, message)


def user_messages(history: list[dict[str, Any]]) -> list[str]:
    return [i["content"] for i in history if i.get("role") == "user"]


def assert_consistent(client: Client, session: str, user: str, expected: list[str]) -> None:
    """Every accepted message is in history exactly once, in order, each answered once."""
    history = client.history(session, user)
    assert user_messages(history) == expected
    answers = [i for i in history if i.get("role") == "assistant"]
    assert len(answers) == len(expected)
    turns = client.turns(session, user)
    assert [t.seq for t in turns] == list(range(1, len(expected) + 1))
    assert all(t.status is TurnStatus.SUCCEEDED for t in turns), [t.error for t in turns]
    for before, after in itertools.pairwise(turns):
        assert before.finished_at is not None and after.started_at is not None
        assert after.started_at >= before.finished_at, "turns of one session overlapped"


def test_burst_on_one_session_runs_in_order_without_retries(
    client: Client, start_worker: Any, uid: str
) -> None:
    w = start_worker("burst", concurrency=20)
    session, user = f"burst-{uid}", f"u-{uid}"
    msgs = [f"message {i}" for i in range(30)]
    turns = [client.enqueue(session, user, m) for m in msgs]
    assert [t.seq for t in turns] == list(range(1, 31))
    results = [client.wait(t.id, timeout=60) for t in turns]
    assert all(r.status is TurnStatus.SUCCEEDED for r in results)
    # The k-th turn saw all earlier turns: 2 items per earlier turn, plus its own message.
    assert [r.output for r in results] == [
        f"echo: {m} [ctx={2 * i + 1}]" for i, m in enumerate(msgs)
    ]
    assert_consistent(client, session, user, msgs)
    log = w.log_text()
    assert "retry" not in log.lower() and "countdown" not in log.lower()
    assert log.count("succeeded in") >= 1


def test_kill_9_mid_turn_completes_once(
    client: Client, start_worker: Any, start_beat: Any, uid: str
) -> None:
    start_beat()
    doomed = start_worker("doomed", TURNQ_AGENT="tests.agents:slow_echo", TEST_MODEL_LATENCY_S="3")
    session, user = f"kill-{uid}", f"u-{uid}"
    turn = client.enqueue(session, user, "survive a kill -9")
    wait_for(
        lambda: client.get_turn(turn.id).status is TurnStatus.RUNNING, 30, "turn never started"
    )
    doomed.kill()
    start_worker("rescuer", TURNQ_AGENT="tests.agents:slow_echo", TEST_MODEL_LATENCY_S="0.2")
    done = client.wait(turn.id, timeout=60)
    assert done.status is TurnStatus.SUCCEEDED
    assert done.attempts == 2  # the model call is at-least-once; the result exactly-once
    assert_consistent(client, session, user, ["survive a kill -9"])


def test_lock_expiring_under_paused_worker_is_fenced(
    client: Client, start_worker: Any, start_beat: Any, uid: str
) -> None:
    start_beat()
    stale = start_worker("stale", TURNQ_AGENT="tests.agents:slow_echo", TEST_MODEL_LATENCY_S="2")
    session, user = f"pause-{uid}", f"u-{uid}"
    turn = client.enqueue(session, user, "who wins?")
    wait_for(
        lambda: client.get_turn(turn.id).status is TurnStatus.RUNNING, 30, "turn never started"
    )
    stale.pause()  # SIGSTOP: heartbeats stop, the 2 s lock expires, the reaper re-kicks
    try:
        start_worker("fresh", TURNQ_AGENT="tests.agents:slow_echo", TEST_MODEL_LATENCY_S="0.5")
        done = client.wait(turn.id, timeout=60)
        assert done.status is TurnStatus.SUCCEEDED and done.attempts == 2
    finally:
        stale.resume()
    # The stale worker wakes up, finishes its model call, and its write is refused.
    wait_for(
        lambda: "fenced out" in stale.log_text() or "lock lost" in stale.log_text(),
        30,
        "the stale worker never noticed it had been fenced",
    )
    assert_consistent(client, session, user, ["who wins?"])
    follow = client.enqueue(session, user, "still usable")
    assert client.wait(follow.id, timeout=30).status is TurnStatus.SUCCEEDED
    assert_consistent(client, session, user, ["who wins?", "still usable"])


def test_deleted_kick_is_recovered_by_the_reaper(
    client: Client, start_worker: Any, start_beat: Any, stack_env: dict[str, str], uid: str
) -> None:
    r = redis.Redis.from_url(stack_env["TURNQ_REDIS_URL"])
    queue = keys.queue(keys.TURNS_QUEUE)
    session, user = f"lostkick-{uid}", f"u-{uid}"
    turn = client.enqueue(session, user, "my kick was lost")
    assert r.llen(queue) >= 1, "the kick should be waiting in the queue"
    r.delete(queue)  # the message is gone; only Postgres knows about the turn
    start_worker("w")
    start_beat()
    done = client.wait(turn.id, timeout=30)
    assert done.status is TurnStatus.SUCCEEDED
    assert_consistent(client, session, user, ["my kick was lost"])


def test_fifty_sessions_twenty_turns_two_workers(
    stack_env: dict[str, str], start_worker: Any, client: Client, uid: str, stub_llm: Any
) -> None:
    stub_llm.configure(latency_s=0.02)
    env = {
        "TURNQ_MODEL_PROVIDER": "openai",
        "TURNQ_OPENAI_BASE_URL": stub_llm.url + "/v1",
        "TURNQ_OPENAI_API_KEY": "test-key",
        "TURNQ_OPENAI_API": "chat",
        "TURNQ_AGENT": "shared.demo_agent:build_agent",
    }
    w1 = start_worker("a", concurrency=50, **env)
    w2 = start_worker("b", concurrency=50, **env)
    user = f"u-{uid}"
    sessions = [f"s{i}-{uid}" for i in range(50)]
    plan = {s: [f"{s} message {j}" for j in range(20)] for s in sessions}

    def enqueue_session(s: str) -> list[str]:
        return [client.enqueue(s, user, m).id for m in plan[s]]

    with ThreadPoolExecutor(8) as pool:
        turn_ids = [t for ids in pool.map(enqueue_session, sessions) for t in ids]
    for tid in turn_ids:
        assert client.wait(tid, timeout=180).status is TurnStatus.SUCCEEDED
    for s in sessions:
        assert_consistent(client, s, user, plan[s])
    stats = stub_llm.stats()
    assert stats["overlapping_conversations"] == 0, stats
    assert stats["max_in_flight"] > 1, "sessions never ran in parallel: the test proves nothing"
    assert w1.log_text().count("succeeded in") > 0 and w2.log_text().count("succeeded in") > 0


def test_worker_ignores_malformed_kicks(
    client: Client, start_worker: Any, stack_env: dict[str, str], uid: str
) -> None:
    from shared.celery_app import make_celery
    from shared.settings import get_settings

    w = start_worker("robust")
    app = make_celery(get_settings())
    for bad in ["not-a-uuid", "'; DROP TABLE turns;--", "", "0" * 10_000]:
        app.send_task(keys.DRAIN_TASK, args=[bad])
    app.send_task(keys.DRAIN_TASK, args=[])  # wrong arity: Celery rejects, the worker lives
    turn = client.enqueue(f"after-bad-{uid}", f"u-{uid}", "still alive?")
    assert client.wait(turn.id, timeout=30).status is TurnStatus.SUCCEEDED
    assert w.alive()
    assert isinstance(w, WorkerProcess)


def test_one_worker_process_keeps_hundreds_of_turns_in_flight(
    client: Client, start_worker: Any, stub_llm: Any, uid: str
) -> None:
    """I6: model calls are I/O; one process holds ~200 of them at once, not one per process."""
    stub_llm.configure(latency_s=3.0)  # long enough that all 200 are started before any ends
    start_worker(
        "wide",
        concurrency=200,
        TURNQ_MODEL_PROVIDER="openai",
        TURNQ_OPENAI_BASE_URL=stub_llm.url + "/v1",
        TURNQ_OPENAI_API_KEY="test-key",
        TURNQ_OPENAI_API="chat",
        TURNQ_AGENT="shared.demo_agent:build_agent",
    )
    user = f"u-{uid}"
    with ThreadPoolExecutor(8) as pool:
        turns = list(
            pool.map(lambda i: client.enqueue(f"wide{i}-{uid}", user, f"hi {i}"), range(200))
        )
    for t in turns:
        assert client.wait(t.id, timeout=120).status is TurnStatus.SUCCEEDED
    stats = stub_llm.stats()
    assert stats["max_in_flight"] >= 150, stats  # one process, one loop, many calls at once
    assert stats["overlapping_conversations"] == 0
