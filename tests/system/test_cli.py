"""The commands users type: `turnq demo`, `turnq dev` + `turnq chat`, `turnq worker`."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from ops.processes import ROOT, ManagedProcess
from producer import Client
from producer.gateway.keys import create_key
from tests.system.test_gateway_support import GatewayProcess

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
    text = " ".join(out.stdout.split())  # rich wraps long lines
    assert "Assistant> Austin is warmer" in text, out.stdout
    # The billing question is handed over; the follow-up is answered by Billing again (the
    # session's active agent), and its tools read the user from the run context.
    assert "Billing> Here is the plan: demo-user is on the" in text, out.stdout
    assert "Billing> Here are the invoices:" in text and "for demo-user" in text, out.stdout
    assert "queue wait" in out.stdout and "tokens" in out.stdout
    assert not (tmp_path / "stack.json").exists(), "the embedded stack was not stopped"


@contextmanager
def _listening() -> Iterator[int]:
    """A loopback port something listens on, for the duration."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _start_dev(data_dir: Path, **env: str) -> ManagedProcess:
    env = {**_bare_env(data_dir), "TURNQ_GATEWAY_PORT": "0", "COLUMNS": "250", **env}
    dev = ManagedProcess(
        [*TURNQ, "dev"], env, "turnq-dev", ready="Ctrl-C to stop", inherit_env=False
    )
    return dev.start(timeout=180)


def _started_by(dev: ManagedProcess, data_dir: Path) -> list[psutil.Process]:
    """Every process `turnq dev` runs: its children, and the embedded postmaster (pg_ctl
    daemonizes it, so it is nobody's child) with its backends."""
    procs = psutil.Process(dev.pid).children(recursive=True)
    postmaster = psutil.Process(int((data_dir / "pg" / "postmaster.pid").read_text().split()[0]))
    procs += [postmaster, *postmaster.children(recursive=True)]
    commands = " ".join(" ".join(p.cmdline()) for p in procs)
    for part in ("redis-server", "postgres", "worker", "beat", "gateway", "flower"):
        assert part in commands, (part, commands)
    return procs


def _stop_dev_and_check(dev: ManagedProcess, data_dir: Path, sig: signal.Signals) -> float:
    """Send ``sig`` to `turnq dev` alone (not its group): it must exit 0 having stopped every
    process it started and freed the embedded servers' ports.  Returns the seconds taken."""
    assert dev.proc is not None
    procs = _started_by(dev, data_dir)
    stack = json.loads((data_dir / "stack.json").read_text())
    ports = [int(stack[k].rsplit(":", 1)[1].split("/")[0]) for k in ("redis_url", "database_url")]
    try:
        began = time.monotonic()
        dev.proc.send_signal(sig)
        dev.proc.wait(90)
        took = time.monotonic() - began
        assert dev.proc.returncode == 0, dev.log_text()[-2000:]
        assert "stopping" in dev.log_text()
        left = [(p.pid, p.cmdline()) for p in procs if not _gone(p)]
        assert not left
        for port in ports:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert not (data_dir / "stack.json").exists()
        return took
    finally:  # a failure must not leave them to the next tests
        dev.kill()
        for p in procs:
            with suppress(psutil.Error):
                if not _gone(p):
                    p.kill()  # psutil checks the pid was not reused


def _gone(p: psutil.Process) -> bool:
    """Exited, or a zombie left to init (it holds no port or file)."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_dev_then_chat_through_the_queue_then_ctrl_c(tmp_path: Path) -> None:
    with _listening() as taken:
        dev = _start_dev(tmp_path, TURNQ_FLOWER_PORT=str(taken))
    try:
        assert (tmp_path / "stack.json").exists()
        chat = subprocess.run(
            [*TURNQ, "chat", "cli-session", "--user", "cli-user"],
            input="What is the weather in Austin?\nHow about Seattle?\nWhich city is warmer?\n"
            "/history\n/quit\n",
            env=dev.env, cwd=ROOT, capture_output=True, text=True, timeout=120,
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
        review = re.search(r"Approvals:\s+(http://\S+/review)", printed)
        assert review and httpx.get(review.group(1), timeout=10).status_code == 200
        _check_flower(printed, taken)
    finally:
        _stop_dev_and_check(dev, tmp_path, signal.SIGINT)


def _check_flower(printed: str, taken: int) -> None:
    """Flower runs behind the printed password, on a free port when the configured one is
    taken, and the password is on no command line (any local user can read those)."""
    found = re.search(
        r"Flower:\s+(http://127\.0\.0\.1:(\d+)/)\s+user (\S+)\s+password (\S+)", printed
    )
    assert found, printed[-2000:]
    url, port, user, password = found.group(1), int(found.group(2)), found.group(3), found.group(4)
    assert port != taken and len(password) >= 16
    assert httpx.get(url + "api/workers", timeout=10).status_code == 401
    assert httpx.get(url + "api/workers", auth=(user, "wrong"), timeout=10).status_code == 401
    answer = httpx.get(url + "api/workers", auth=(user, password), timeout=10)
    assert answer.status_code == 200, answer.text[:300]
    cmdlines = list(_cmdlines())
    assert len(cmdlines) > 5
    assert not [c for c in cmdlines if password.encode() in c]


def _cmdlines() -> Iterator[bytes]:
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        with suppress(OSError):  # exited meanwhile
            yield path.read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_dev_stops_everything_it_started_on(sig: signal.Signals, tmp_path: Path) -> None:
    """A supervisor's SIGTERM and a closed terminal's SIGHUP stop it as Ctrl-C does: before,
    Python's default handler ended `turnq dev` alone and left the rest running."""
    took = _stop_dev_and_check(_start_dev(tmp_path), tmp_path, sig)
    print(f"{sig.name}: stopped in {took:.1f}s")


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


# --- approvals: `turnq chat` asks, `turnq sessions show` lists ------------------------

DEMO = {"TURNQ_AGENT": "shared.demo_agent:build_agent"}
REFUND = "I have a billing question: can I get a refund?"


def _chat(env: dict[str, str], *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TURNQ, "chat", *args], input=stdin, env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def test_chat_asks_before_a_tool_runs(
    stack_env: dict[str, str], start_worker: Any, client: Client, uid: str
) -> None:
    """Through the queue: y runs the refund; n (with a reason) tells the agent; a pause
    left undecided when stdin ends is said, and `turnq sessions show` lists it."""
    start_worker("cli-approvals", **DEMO)
    env = {**os.environ, **stack_env, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    session, user = f"cli-{uid}", f"u-{uid}"
    chat = _chat(
        env, session, "--user", user,
        stdin=f"{REFUND}\ny\n{REFUND}\nmaybe\nn\nrefunds go through the phone line\n"
        f"/history\n{REFUND}\n",
    )  # fmt: skip
    out = " ".join(chat.stdout.split())
    assert chat.returncode == 0, chat.stdout + chat.stderr
    assert out.count("the agent asks to run request_refund({})") == 3, out
    assert out.count("approve? [y/n]") == 4 and "answer y or n" in out  # "maybe" asked again
    assert "refund of" in out and user in out
    assert "refunds go through the phone line" in out.split("why not?")[1]
    assert "still waits for approval" in out and "Traceback" not in chat.stderr
    print(chat.stdout)
    turns = client.turns(session, user)
    assert [t.status.value for t in turns] == ["succeeded", "succeeded", "waiting"]
    assert sum("refund of" in str(i.get("output")) for i in client.history(session, user)) == 1
    # The call left waiting is listed with its session.
    show = subprocess.run(
        [*TURNQ, "sessions", "show", session, "--user", user], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert show.returncode == 0, show.stdout + show.stderr
    assert "waiting for approval (1)" in show.stdout and "request_refund" in show.stdout
    assert turns[2].id in show.stdout
    client.cancel(turns[2].id, user)


def test_chat_over_http_asks_before_a_tool_runs(
    stack_env: dict[str, str], database_url: str, start_worker: Any, client: Client, uid: str
) -> None:
    start_worker("cli-approvals-http", **DEMO)
    session, user = f"cli-http-{uid}", f"u-{uid}"
    gateway = GatewayProcess(stack_env, "gateway-cli").start()
    try:
        env = {
            **os.environ, **stack_env, "PYTHONPATH": str(ROOT), "COLUMNS": "250",
            "TURNQ_API_KEY": create_key(database_url, user, "cli test"),
        }  # fmt: skip
        chat = _chat(
            env, session, "--url", gateway.url,
            stdin=f"{REFUND}\ny\n{REFUND}\nn\n\n/quit\n",
        )  # fmt: skip
    finally:
        gateway.stop()
    out = " ".join(chat.stdout.split())
    assert chat.returncode == 0, chat.stdout + chat.stderr
    assert out.count("the agent asks to run request_refund({})") == 2, out
    assert "refund of" in out and "rejected" in out.split("why not?")[1], out
    assert [t.status.value for t in client.turns(session, user)] == ["succeeded", "succeeded"]
