"""System tier: real `celery worker` / `celery beat` processes on the run's Redis and Postgres.

Short lock TTLs and reaper intervals make recovery observable in seconds; the
production defaults are the same code with larger numbers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from producer import Client
from tests.support.stub_llm import StubLLM, stub_llm_process
from tests.support.workers import BeatProcess, WorkerProcess

FAST_RECOVERY = {
    "TURNQ_LOCK_TTL_S": "2",
    "TURNQ_HEARTBEAT_S": "0.5",
    "TURNQ_REAPER_INTERVAL_S": "0.5",
    "TURNQ_REAPER_STALE_S": "1",
    "TURNQ_MODEL_RETRY_BACKOFF_S": "0.05",
}


@pytest.fixture
def worker_env(stack_env: dict[str, str]) -> dict[str, str]:
    return {**stack_env, **FAST_RECOVERY, "TURNQ_AGENT": "tests.agents:echo"}


@pytest.fixture
def client(stack_env: dict[str, str]) -> Iterator[Client]:
    c = Client.from_settings()
    yield c
    c.close()


@pytest.fixture
def start_worker(worker_env: dict[str, str]) -> Iterator[object]:
    """Factory: start_worker(name, **env) -> a started WorkerProcess, stopped at teardown."""
    started: list[WorkerProcess | BeatProcess] = []

    def _start(name: str = "w1", concurrency: int = 50, **env: str) -> WorkerProcess:
        w = WorkerProcess({**worker_env, **env}, name=name, concurrency=concurrency)
        w.start()
        started.append(w)
        return w

    yield _start
    for p in reversed(started):
        p.stop()


@pytest.fixture
def start_beat(worker_env: dict[str, str]) -> Iterator[object]:
    started: list[BeatProcess] = []

    def _start(**env: str) -> BeatProcess:
        b = BeatProcess({**worker_env, **env})
        b.start()
        started.append(b)
        return b

    yield _start
    for p in started:
        p.stop()


@pytest.fixture
def stub_llm() -> Iterator[StubLLM]:
    with stub_llm_process() as stub:
        yield stub
