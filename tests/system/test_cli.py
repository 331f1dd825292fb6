"""The commands users type: `turnq demo`, `turnq dev` + `turnq chat`, `turnq worker`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ops.processes import ROOT, ManagedProcess
from tests.system.test_pipeline import wait_for

pytestmark = pytest.mark.system

TURNQ = [sys.executable, "-m", "producer.cli"]


def _bare_env(data_dir: Path) -> dict[str, str]:
    """No URLs configured: the zero-config path with an embedded Redis and Postgres."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNQ_")}
    env.update(TURNQ_DATA_DIR=str(data_dir), TURNQ_MODEL_PROVIDER="offline", PYTHONPATH=str(ROOT))
    return env


def test_demo_runs_the_seed_conversation_on_an_embedded_stack(tmp_path: Path) -> None:
    out = subprocess.run(
        [*TURNQ, "demo"], env=_bare_env(tmp_path), cwd=ROOT, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "agent> Austin is warmer" in out.stdout, out.stdout
    assert "queue wait" in out.stdout and "tokens" in out.stdout
    assert not (tmp_path / "stack.json").exists(), "the embedded stack was not stopped"


def test_dev_then_chat_through_the_queue_then_ctrl_c(tmp_path: Path) -> None:
    env = {**_bare_env(tmp_path), "TURNQ_GATEWAY_PORT": "0", "COLUMNS": "250"}
    dev = ManagedProcess(
        [*TURNQ, "dev"], env, "turnq-dev", ready="Ctrl-C to stop", inherit_env=False
    )
    dev.start(timeout=180)
    try:
        assert (tmp_path / "stack.json").exists()
        chat = subprocess.run(
            [*TURNQ, "chat", "cli-session", "--user", "cli-user"],
            input="What is the weather in Austin?\nHow about Seattle?\nWhich city is warmer?\n"
            "/history\n/quit\n",
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert chat.returncode == 0, chat.stdout + chat.stderr
        assert "Austin is warmer" in chat.stdout
        assert "get_weather" in chat.stdout  # /history shows the tool calls
        # The gateway runs too, with a development key printed once.
        printed = dev.log_text()
        url = re.search(r"HTTP API:\s+(http://\S+)", printed)
        key = re.search(r"dev API key \(user dev, shown once\): (\S+)", printed)
        assert url and key, printed[-2000:]
        listing = httpx.get(
            url.group(1) + "/v1/sessions",
            headers={"Authorization": f"Bearer {key.group(1)}"},
            timeout=10,
        )
        assert listing.status_code == 200, listing.text
    finally:
        assert dev.proc is not None
        dev.proc.send_signal(signal.SIGINT)
        dev.proc.wait(60)
    assert dev.proc.returncode == 0, dev.log_text()[-2000:]
    wait_for(lambda: not (tmp_path / "stack.json").exists(), 10, "stack.json left behind")


def test_chat_rejects_bad_input_clearly(stack_env: dict[str, str]) -> None:
    env = {**os.environ, **stack_env, "PYTHONPATH": str(ROOT)}
    chat = subprocess.run(
        [*TURNQ, "chat", "bad id with spaces", "--user", "u"],
        input="hello\n/quit\n", env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "session_id" in chat.stdout + chat.stderr
    assert "Traceback" not in chat.stdout + chat.stderr


def test_worker_command_validates_queues() -> None:
    out = subprocess.run(
        [*TURNQ, "worker", "--queues", "turns,bogus"], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode != 0
    assert "bogus" in out.stdout + out.stderr
