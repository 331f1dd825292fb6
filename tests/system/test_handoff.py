"""Drains handed to the loop (workers/handoff.py, decision 0009), with real worker processes.

A drain's Celery task returns as soon as the drain runs on the event loop, so a turn in
flight holds no thread; its kick stays unacked until the drain ends, which keeps
``acks_late``: the concurrency caps the drains in flight, and a worker killed mid-drain
has its kick redelivered.  The broker is a private Redis where kombu's shared ``unacked``
hash must be read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import psycopg
import pytest

from producer import Client
from shared.settings import Settings
from shared.status import TurnStatus
from tests.support.servers import PrivateRedis, wait_until
from tests.support.stub_llm import StubLLM
from tests.system.test_pipeline import wait_for

pytestmark = pytest.mark.system

SLOW = {"TURNQ_AGENT": "tests.agents:slow_echo"}


@pytest.fixture
def broker() -> Iterator[PrivateRedis]:
    with PrivateRedis() as server:
        yield server


def unacked(broker: PrivateRedis) -> int:
    """Kicks in kombu's unacked set on the broker: received by a worker, not acked."""
    with broker.client() as r:
        return int(r.hlen("unacked"))


def test_a_turn_in_flight_holds_no_thread(
    client: Client, start_worker: Any, stub_llm: StubLLM, uid: str
) -> None:
    stub_llm.configure(latency_s=4.0)
    worker = start_worker("nothread", concurrency=300, **stub_llm.worker_env("chat"))
    process = psutil.Process(worker.pid)
    idle = process.num_threads()
    with ThreadPoolExecutor(8) as pool:
        turns = list(
            pool.map(lambda i: client.enqueue(f"nt{i}-{uid}", f"u-{uid}", "hi"), range(250))
        )
    seen: list[tuple[int, int]] = []

    def many_in_flight() -> bool:
        seen.append((int(stub_llm.stats()["in_flight"]), process.num_threads()))
        return seen[-1][0] >= 200

    wait_until(many_in_flight, 60, 0.05, "the turns never ran together")
    in_flight, threads = seen[-1]
    assert threads < idle + 30, f"{threads} threads for {in_flight} turns in flight"
    for t in turns:
        assert client.wait(t.id, timeout=120).status is TurnStatus.SUCCEEDED


def test_concurrency_caps_the_drains_in_flight(
    client: Client, start_worker: Any, stack_env: dict[str, str], uid: str
) -> None:
    start_worker("capped", concurrency=3, TEST_MODEL_LATENCY_S="0.8", **SLOW)
    turns = [client.enqueue(f"cap{i}-{uid}", f"u-{uid}", "hi") for i in range(8)]
    ids = [t.id for t in turns]
    most = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal most
        url = stack_env["TURNQ_DATABASE_URL"].replace("+psycopg", "")
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM turns WHERE status = 'running' AND id = ANY(%s::uuid[])",
                    (ids,),
                ).fetchone()
                most = max(most, int(row[0]) if row else 0)
                time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for t in turns:
            assert client.wait(t.id, timeout=60).status is TurnStatus.SUCCEEDED
    finally:
        stop.set()
        sampler.join(5)
    assert 2 <= most <= 3, f"{most} turns ran at once on a worker of concurrency 3"


def test_the_kick_stays_unacked_until_its_drain_ends(
    start_worker: Any, broker: PrivateRedis, uid: str
) -> None:
    env = {"TURNQ_BROKER_URL": broker.url}
    start_worker("acks", TEST_MODEL_LATENCY_S="2", **SLOW, **env)
    with Client.from_settings(Settings(broker_url=broker.url)) as client:
        turn = client.enqueue(f"ack-{uid}", f"u-{uid}", "hold on")
        wait_for(lambda: client.get_turn(turn.id).status is TurnStatus.RUNNING, 30, "not started")
        assert unacked(broker) == 1  # the drain runs on: its kick is unacked
        assert client.wait(turn.id, timeout=30).status is TurnStatus.SUCCEEDED
        wait_until(lambda: unacked(broker) == 0, 10, message="the kick was never acked")


def test_a_worker_killed_mid_drain_has_its_kick_redelivered(
    start_worker: Any, broker: PrivateRedis, uid: str
) -> None:
    """No beat, so no reaper: only the unacked kick's redelivery can finish the turn."""
    env = {"TURNQ_BROKER_URL": broker.url, "TURNQ_VISIBILITY_TIMEOUT_S": "3"}
    first = start_worker("doomed", TEST_MODEL_LATENCY_S="30", **SLOW, **env)
    with Client.from_settings(Settings(broker_url=broker.url)) as client:
        turn = client.enqueue(f"kill-{uid}", f"u-{uid}", "survive this")
        wait_for(lambda: client.get_turn(turn.id).status is TurnStatus.RUNNING, 30, "not started")
        first.kill()
        time.sleep(3.5)  # the visibility timeout is the mechanism under test: outlive it
        start_worker("heir", TEST_MODEL_LATENCY_S="0.1", **SLOW, **env)
        done = client.wait(turn.id, timeout=60)
        assert done.status is TurnStatus.SUCCEEDED and done.attempts == 2
