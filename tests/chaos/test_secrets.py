"""No API key, database or Redis password, or message content where an operator can see it.

A whole deployment runs with secrets everywhere they can be: a Postgres password in the
database URL (the shared server trusts any), a private Redis with ``requirepass``, an API
key, a Flower password, and a unique marker in the messages.  A real conversation goes
through `turnq chat --url` (key from ``TURNQ_API_KEY``), the gateway (access log on), a
worker, beat and Flower; then none of the secrets or the marker may appear in:

* any process's stdout/stderr (gateway, worker, beat, Flower, chat's stderr);
* any process's command line (``/proc/<pid>/cmdline``: readable by every local user);
* the Celery task messages as Redis received them (``MONITOR``) and Flower's task API;
* the Prometheus pages of the worker, the gateway and Flower, and the gateway's /healthz;
* anything Redis received at all, except the turn's own event stream (content by design),
  and never the API key or a password.

tests/system/test_beat_jobs.py and test_flower.py check the content marker in a worker's
log and in Flower; this file puts every secret and every surface together.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from ops.devstack import free_port
from ops.processes import ROOT, ManagedProcess
from producer.flower import READY as FLOWER_READY
from producer.gateway.keys import hash_secret
from tests.support.chaos_stack import gateway_and_worker
from tests.support.servers import PrivateRedis, wait_until
from tests.support.workers import BeatProcess, WorkerProcess
from tests.system.test_gateway_support import TURNQ, Api, GatewayProcess, new_key

pytestmark = [pytest.mark.chaos, pytest.mark.system]

FLOWER_USER = "ops"


@dataclass
class Deployment:
    env: dict[str, str]
    secrets: dict[str, str]  # name -> value that must never show
    marker: str
    gateway: GatewayProcess
    worker: WorkerProcess
    beat: BeatProcess
    flower: ManagedProcess
    flower_url: str
    metrics_port: int
    redis_commands: list[str] = field(default_factory=list)
    cmdlines: dict[str, bytes] = field(default_factory=dict)
    chat_stdout: str = ""
    chat_stderr: str = ""

    @property
    def processes(self) -> list[ManagedProcess]:
        return [self.gateway, self.worker, self.beat, self.flower]

    def flower_get(self, path: str) -> str:
        password = self.secrets["flower password"]
        r = httpx.get(self.flower_url + path, auth=(FLOWER_USER, password), timeout=10)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        return r.text


def leaks(text: str | bytes, values: dict[str, str]) -> list[str]:
    blob = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    return [name for name, value in values.items() if value.encode() in blob]


MONITOR_FAILED = "MONITOR FAILED:"


def _monitor(url: str, sink: list[str], stop: threading.Event) -> None:
    """Every command Redis receives, as MONITOR shows it, until ``stop``."""
    # No read timeout (redis-py's default is 5 s): the processes may take longer than that
    # to send their first command, and the server's close ends the read at teardown.
    client = redis.Redis.from_url(url, socket_timeout=None)
    try:
        with client.monitor() as m:  # type: ignore[no-untyped-call]
            for command in m.listen():
                sink.append(str(command["command"]))
                if stop.is_set():
                    return
    except (redis.ConnectionError, OSError):
        return
    except Exception as exc:  # a line redis-py cannot parse: say which, and fail the test
        sink.append(f"{MONITOR_FAILED} {exc!r}")
    finally:
        client.close()


def _record_cmdline(dep: Deployment, name: str, pid: int) -> None:
    with contextlib.suppress(OSError):
        dep.cmdlines[name] = Path(f"/proc/{pid}/cmdline").read_bytes()
    children = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        for child in children.read_text().split():
            _record_cmdline(dep, f"{name} child {child}", int(child))


@pytest.fixture(scope="module")
def deployment(stack_env: dict[str, str]) -> Iterator[Deployment]:
    values = {
        "postgres password": f"PGPW{secrets.token_hex(8)}",
        "redis password": f"REDISPW{secrets.token_hex(8)}",
        "flower password": f"FLOWERPW{secrets.token_hex(8)}",
    }
    private = PrivateRedis()
    with contextlib.closing(private.client()) as admin:
        admin.config_set("requirepass", values["redis password"])
    redis_url = f"redis://:{values['redis password']}@127.0.0.1:{private.port}/0"
    # The shared Postgres trusts every local connection, so any password is accepted.
    db_url = stack_env["TURNQ_DATABASE_URL"].replace(
        "postgresql://postgres@", f"postgresql://postgres:{values['postgres password']}@", 1
    )
    assert values["postgres password"] in db_url
    metrics_port, flower_port = free_port(), free_port()
    env = {
        **stack_env,
        "TURNQ_REDIS_URL": redis_url,
        "TURNQ_DATABASE_URL": db_url,
        "TURNQ_METRICS_PORT": str(metrics_port),
        "TURNQ_REAPER_INTERVAL_S": "0.5",
        "TURNQ_FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{values['flower password']}",
        "TURNQ_TASK_EVENTS": "true",  # Flower's task list (off by default): read for leaks
    }
    stop = threading.Event()
    commands: list[str] = []
    watcher = threading.Thread(target=_monitor, args=(redis_url, commands, stop), daemon=True)
    watcher.start()
    started: list[ManagedProcess] = []
    try:
        gateway, worker = gateway_and_worker(env, "secrets", access_log=True)
        started += [worker, gateway]
        beat = BeatProcess(env)
        beat.start()
        started.append(beat)
        flower = ManagedProcess(
            [*TURNQ, "flower", "--port", str(flower_port)], env, "flower", ready=FLOWER_READY
        )
        flower.start()
        started.append(flower)
        dep = Deployment(
            env, values, f"MARKER{secrets.token_hex(12)}", gateway, worker, beat, flower,
            f"http://127.0.0.1:{flower_port}", metrics_port, commands,
        )  # fmt: skip
        yield dep
    finally:
        stop.set()
        for proc in started:
            proc.stop()
        private.close()
        watcher.join(5)


def _flower_sees_worker(dep: Deployment) -> bool:
    workers = httpx.get(
        dep.flower_url + "/api/workers?status=1",
        auth=(FLOWER_USER, dep.secrets["flower password"]),
        timeout=10,
    ).json()
    return any(name.startswith(dep.worker.name + "@") and up for name, up in workers.items())


def test_no_secret_or_content_reaches_any_operator_surface(
    deployment: Deployment, database_url: str, uid: str
) -> None:
    dep = deployment
    wait_until(lambda: _flower_sees_worker(dep), 30, 0.2, "Flower sees the worker")
    user = f"secret-user-{uid}"
    key = new_key(database_url, user)
    prefix, secret = key.split("_", 2)[1:]
    values = {
        **dep.secrets,
        "API key": key,
        "API key secret": secret,
        "API key hash": hash_secret(prefix, secret).split("$")[1],
    }
    session = f"secrets-{uid}"
    lines = [f"first {dep.marker}", f"second {dep.marker} FAIL-PERMANENT", f"third {dep.marker}"]

    # The conversation, as a user runs it: the key in the environment, not on the line.
    chat_env = {k: v for k, v in os.environ.items() if not k.startswith("TURNQ_")}
    chat_env |= {"PYTHONPATH": str(ROOT), "TURNQ_API_KEY": key}
    chat = subprocess.Popen(
        [*TURNQ, "chat", session, "--url", dep.gateway.url],
        env=chat_env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    cmdline = Path(f"/proc/{chat.pid}/cmdline")
    wait_until(lambda: b"chat" in cmdline.read_bytes(), 10, 0.01, "chat exec'd")
    _record_cmdline(dep, "chat", chat.pid)
    for proc in dep.processes:
        _record_cmdline(dep, proc.name, proc.pid)
    dep.chat_stdout, dep.chat_stderr = chat.communicate("\n".join([*lines, "/quit"]) + "\n", 120)
    assert chat.returncode == 0, dep.chat_stderr
    assert f"agent> echo: first {dep.marker} [ctx=1]" in dep.chat_stdout, dep.chat_stdout
    assert f"agent> echo: third {dep.marker}" in dep.chat_stdout, dep.chat_stdout

    api = Api(dep.gateway.url, key)
    try:
        turns = api.expect(200, "GET", "/v1/sessions?limit=5")["sessions"]
        assert [s["session_id"] for s in turns] == [session]
        items = api.items(session)
        assert sum(dep.marker in str(i.get("content")) for i in items) >= 4  # stored, readable
    finally:
        api.close()

    # Flower has seen the drains (ids only) before we read everything it shows.
    def drains() -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(
            dep.flower_url + "/api/tasks?taskname=turnq.drain",
            auth=(FLOWER_USER, dep.secrets["flower password"]),
            timeout=10,
        ).json()
        return found if sum(t.get("state") == "SUCCESS" for t in found.values()) >= 3 else {}

    tasks = wait_until(drains, 30, 0.2, "Flower saw the three drains")
    for task in tasks.values():
        assert task["kwargs"] == "{}" and task["args"].startswith("['"), task
    # Wait for the worker's last log lines and a beat tick before reading everything.
    wait_until(lambda: "turn failed" in dep.worker.log_text(), 10, 0.1, "the failure logged")
    time.sleep(1.0)

    surfaces: dict[str, str | bytes] = {f"{p.name} log": p.log_text() for p in dep.processes}
    surfaces["chat stderr"] = dep.chat_stderr
    surfaces |= {f"{name} cmdline": raw for name, raw in dep.cmdlines.items()}
    surfaces["worker /metrics"] = httpx.get(
        f"http://127.0.0.1:{dep.metrics_port}/metrics", timeout=10
    ).text
    for path in ("/metrics", "/healthz"):
        surfaces[f"gateway {path}"] = httpx.get(dep.gateway.url + path, timeout=10).text
    first = next(iter(tasks))
    for path in (
        "/api/tasks", f"/api/task/info/{first}", "/api/workers", "/metrics", "/tasks",
        f"/task/{first}", "/broker", f"/worker/{next(iter(_workers(dep)))}",
    ):  # fmt: skip
        surfaces[f"flower {path}"] = dep.flower_get(path)
    redis_seen = "\n".join(dep.redis_commands)
    assert MONITOR_FAILED not in redis_seen, [c for c in dep.redis_commands if MONITOR_FAILED in c]
    queue_pushes = [c for c in dep.redis_commands if c.split(" ", 1)[0] in ("LPUSH", "RPUSH")]
    assert queue_pushes, "MONITOR saw no task messages"
    surfaces["celery task messages (MONITOR)"] = "\n".join(queue_pushes)
    surfaces["redis (MONITOR), but the event streams"] = "\n".join(
        c for c in dep.redis_commands if not c.startswith("XADD") and ":events:" not in c
    )
    surfaces["redis (MONITOR), all"] = redis_seen

    # Positive controls: the user sees the conversation, MONITOR saw the content go by
    # (in the event stream), the access log is on, and the processes hold the secrets.
    assert dep.marker in dep.chat_stdout
    assert dep.marker in redis_seen, "MONITOR missed the event stream"
    assert "GET /v1/" in dep.gateway.log_text(), "the access log is off"
    for proc in dep.processes:
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        assert dep.secrets["redis password"].encode() in environ, proc.name
    found = {
        where: leaks(text, values if where.endswith("all") else {**values, "content": dep.marker})
        for where, text in surfaces.items()
    }
    found = {where: names for where, names in found.items() if names}
    print(
        f"secrets: {len(values) + 1} values checked on {len(surfaces)} surfaces "
        f"({len(dep.redis_commands)} Redis commands, {len(queue_pushes)} task messages)"
    )
    assert not found, found


def _workers(dep: Deployment) -> dict[str, Any]:
    workers: dict[str, Any] = httpx.get(
        dep.flower_url + "/api/workers",
        auth=(FLOWER_USER, dep.secrets["flower password"]),
        timeout=10,
    ).json()
    return workers


def test_a_failing_database_url_is_reported_without_its_password(
    deployment: Deployment,
) -> None:
    """A gateway whose Postgres is unreachable says so on /healthz and in its log, without
    the password from the URL."""
    password = deployment.secrets["postgres password"]
    dead = f"postgresql://postgres:{password}@127.0.0.1:{free_port()}/nowhere"
    g = GatewayProcess({**deployment.env, "TURNQ_DATABASE_URL": dead}, "gateway-deaddb")
    try:
        g.start()
        health = httpx.get(g.url + "/healthz", timeout=20)
        assert health.status_code == 503 and health.json()["checks"]["postgres"]["status"] == "down"
        well_formed = f"tq_{secrets.token_hex(6)}_{'k' * 43}"  # so the gateway asks Postgres
        key_probe = httpx.get(
            g.url + "/v1/sessions", headers={"X-API-Key": well_formed}, timeout=20
        )
        assert key_probe.status_code == 503, key_probe.text
        for where, text in (
            ("healthz", health.text),
            ("503", key_probe.text),
            ("log", g.log_text()),
        ):
            assert password not in text, where
            assert "postgresql://" not in text or "***" in text, where
    finally:
        g.stop()
