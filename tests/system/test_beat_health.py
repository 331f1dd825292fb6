"""`turnq health` against real worker, summarizer and beat processes (compose/k8s probes).

Liveness is a heartbeat file each process rewrites from its loops; these tests stop
the process (SIGSTOP), block its asyncio loop, or break its Postgres URL, and expect
the probe to fail within the staleness window and recover afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from agents import Agent

from ops.processes import ROOT
from producer import Client
from shared.status import TurnStatus
from tests.agents import EchoModel, _last_user_text
from tests.support.workers import WorkerProcess
from tests.system.test_pipeline import wait_for

pytestmark = [pytest.mark.system]

STALE_S = 2.0


@pytest.fixture
def health_env(worker_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Settings shared by the processes and by the probe: where heartbeats live, how fresh."""
    return {
        **worker_env,
        "TURNQ_RUN_DIR": str(tmp_path / "run"),
        "TURNQ_LIVENESS_INTERVAL_S": "0.25",
        "TURNQ_LIVENESS_STALE_S": str(STALE_S),
    }


def health(env: dict[str, str], role: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer.cli", "health", "--role", role, "--timeout", "5", *extra],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def healthy(env: dict[str, str], role: str, *extra: str) -> bool:
    return health(env, role, *extra).returncode == 0


def test_worker_liveness_follows_the_process_and_readiness_follows_postgres(
    start_worker: Any, health_env: dict[str, str]
) -> None:
    missing = health(health_env, "worker")
    assert missing.returncode == 1 and "no running worker" in missing.stdout, missing.stdout
    w = start_worker("probe", **health_env)
    ok = health(health_env, "worker")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok   redis" in ok.stdout and "ok   postgres" in ok.stdout
    assert "ok   heartbeat" in ok.stdout
    time.sleep(STALE_S + 0.5)  # a healthy worker keeps its heartbeat fresh
    assert healthy(health_env, "worker")

    w.pause()  # SIGSTOP: both loops stop, so does the heartbeat
    try:
        stopped_at = time.monotonic()
        wait_for(lambda: not healthy(health_env, "worker"), 20, "a stopped worker stayed live")
        assert time.monotonic() - stopped_at >= STALE_S - 0.5
        out = health(health_env, "worker", "--probe", "liveness").stdout
        assert "FAIL heartbeat" in out and "older than" in out
        # Readiness is about the dependencies, not this process.
        assert healthy(health_env, "worker", "--probe", "readiness")
    finally:
        w.resume()
    wait_for(lambda: healthy(health_env, "worker"), 20, "a resumed worker stayed dead")

    bad_pg = {
        **health_env,
        "TURNQ_DATABASE_URL": health_env["TURNQ_DATABASE_URL"].rsplit("/", 1)[0]
        + "/turnq_no_such_database",
    }
    broken = health(bad_pg, "worker")
    assert broken.returncode == 1 and "FAIL postgres" in broken.stdout, broken.stdout
    # A database outage must not make Kubernetes restart healthy workers.
    assert healthy(bad_pg, "worker", "--probe", "liveness")
    assert not healthy(bad_pg, "worker", "--probe", "readiness")
    unreachable = {**health_env, "TURNQ_REDIS_URL": "redis://:sekret-pw@127.0.0.1:1/0"}
    out = health(unreachable, "worker", "--probe", "readiness")
    assert out.returncode == 1 and "FAIL redis" in out.stdout and "sekret-pw" not in out.stdout

    w.stop()  # a worker that shut down removes its heartbeat: "none running", not "stale"
    assert "no running worker" in health(health_env, "worker").stdout


class _LoopBlockingModel(EchoModel):
    """Blocks the worker's asyncio loop (a CPU-bound or sync call in async code)."""

    async def get_response(self, system_instructions: Any, input: Any, *a: Any, **kw: Any) -> Any:
        if "BLOCK-THE-LOOP" in _last_user_text(input):
            time.sleep(float(os.environ.get("TEST_BLOCK_S", "6")))  # noqa: ASYNC251 - the point
        return await super().get_response(system_instructions, input, *a, **kw)


def loop_blocker() -> Agent[Any]:
    return Agent(name="blocker", model=_LoopBlockingModel())


def test_a_stuck_event_loop_fails_liveness(
    start_worker: Any, health_env: dict[str, str], client: Client, uid: str
) -> None:
    env = {**health_env, "TURNQ_AGENT": "tests.system.test_beat_health:loop_blocker"}
    start_worker("stuck", TEST_BLOCK_S="6", **env)
    assert healthy(env, "worker")
    turn = client.enqueue(f"stuck-{uid}", f"u-{uid}", "BLOCK-THE-LOOP please")
    wait_for(lambda: not healthy(env, "worker"), 20, "a blocked loop stayed live")
    assert client.wait(turn.id, timeout=60).status is TurnStatus.SUCCEEDED
    wait_for(lambda: healthy(env, "worker"), 20, "the loop came back but liveness did not")


def test_summarizer_and_beat_roles(start_beat: Any, health_env: dict[str, str]) -> None:
    summarizer = WorkerProcess(health_env, name="sum", concurrency=2, queues=("summarize",))
    summarizer.start()
    try:
        assert healthy(health_env, "summarizer")
        assert not healthy(health_env, "worker"), "a summarizer is not a turn worker"
        assert not healthy(health_env, "beat")
        beat = start_beat(**health_env)
        wait_for(lambda: healthy(health_env, "beat"), 20, "beat never wrote its heartbeat")
        beat.pause()
        try:
            wait_for(lambda: not healthy(health_env, "beat"), 20, "a stopped beat stayed live")
        finally:
            beat.resume()
        wait_for(lambda: healthy(health_env, "beat"), 20, "a resumed beat stayed dead")
        summarizer.pause()
        try:
            wait_for(lambda: not healthy(health_env, "summarizer"), 20, "summarizer stayed live")
        finally:
            summarizer.resume()
    finally:
        summarizer.stop()


class _Answer503(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    yield port


def test_gateway_liveness_is_its_port_answering(health_env: dict[str, str], http_port: int) -> None:
    env = {**health_env, "TURNQ_GATEWAY_HOST": "127.0.0.1", "TURNQ_GATEWAY_PORT": str(http_port)}
    down = health(env, "gateway")
    assert down.returncode == 1 and "FAIL gateway" in down.stdout
    server = ThreadingHTTPServer(("127.0.0.1", http_port), _Answer503)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        up = health(env, "gateway")  # 503 from /healthz is readiness; the process is alive
        assert up.returncode == 0, up.stdout
        assert "answered 503" in up.stdout
    finally:
        server.shutdown()
        server.server_close()
