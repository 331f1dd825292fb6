"""`turnq flower` against real workers: auth, both pools, namespaced queue lengths, task
args that carry ids only, and the tasks page as a person sees it (headless Chromium).

One Flower, one turns worker and one summarize-only worker serve the whole module; the
fixture runs the turns and waits until Flower has seen them, the tests read what it shows.
"""

from __future__ import annotations

import os
import re
import secrets
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.processes import ManagedProcess
from producer import Client
from producer.flower import READY
from shared.celery_app import make_celery
from shared.keys import COMPACT_TASK
from shared.settings import get_settings
from shared.status import TurnStatus
from tests.support.browser import chromium
from tests.support.servers import free_port
from tests.support.workers import WorkerProcess
from tests.system.conftest import FAST_RECOVERY
from tests.system.test_pipeline import wait_for

pytestmark = pytest.mark.system

TURNQ = [sys.executable, "-m", "producer.cli"]
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
IDS_ONLY_ARGS = re.compile(rf"^\['{UUID}'\]$")  # Celery's saferepr of [session_id]
USER = "ops"
# What the tasks page's DataTable posts to /tasks/datatable: the first 100, newest first.
DATATABLE_QUERY = {
    "draw": "1", "start": "0", "length": "100", "search[value]": "",
    "order[0][column]": "0", "order[0][dir]": "desc", "columns[0][data]": "received",
}  # fmt: skip


@dataclass
class FlowerStack:
    url: str
    password: str
    proc: ManagedProcess
    chat: WorkerProcess
    summarizer: WorkerProcess
    chat_name: str = ""
    summarizer_name: str = ""
    session_id: str = ""  # internal id: what task messages carry
    marker: str = ""
    seen: list[str] = field(default_factory=list)  # every body Flower sent us

    @property
    def auth(self) -> tuple[str, str]:
        return (USER, self.password)

    def get(self, path: str, *, auth: bool = True) -> httpx.Response:
        r = httpx.get(self.url + path, auth=self.auth if auth else None, timeout=10)
        self.seen.append(r.text)
        return r

    def json(self, path: str) -> Any:
        r = self.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        return r.json()

    def tasks(self, name: str) -> dict[str, dict[str, Any]]:
        """Flower's tasks of this name that ran for our session."""
        tasks: dict[str, dict[str, Any]] = self.json(f"/api/tasks?taskname={name}")
        return {k: t for k, t in tasks.items() if self.session_id in (t.get("args") or "")}

    def queue_lengths(self) -> dict[str, int]:
        data = self.json("/api/queues/length")
        return {q["name"]: q["messages"] for q in data["active_queues"]}


def _worker_named(stack: FlowerStack, prefix: str) -> str | None:
    workers = stack.json("/api/workers?refresh=1")
    return next((name for name in workers if name.startswith(prefix + "@")), None)


@pytest.fixture(scope="module")
def flower(stack_env: dict[str, str]) -> Iterator[FlowerStack]:
    uid = secrets.token_hex(4)
    # Flower's task list needs task events, off by default (decision 0010)
    env = {
        **stack_env,
        **FAST_RECOVERY,
        "TURNQ_AGENT": "tests.agents:echo",
        "TURNQ_TASK_EVENTS": "true",
    }
    chat = WorkerProcess(env, name=f"fl-chat-{uid}", concurrency=8)
    summarizer = WorkerProcess(env, name=f"fl-sum-{uid}", concurrency=2, queues=("summarize",))
    port, password = free_port(), secrets.token_urlsafe(18)
    proc = ManagedProcess(
        [*TURNQ, "flower", "--port", str(port)],
        {**stack_env, "TURNQ_FLOWER_BASIC_AUTH": f"{USER}:{password}"},
        "flower",
        ready=READY,
    )
    stack = FlowerStack(f"http://127.0.0.1:{port}", password, proc, chat, summarizer)
    celery = make_celery(get_settings())
    client = Client.from_settings()
    try:
        proc.start(timeout=60)
        chat.start()
        summarizer.start()
        stack.chat_name = wait_for(
            lambda: _worker_named(stack, chat.name), 30, "Flower lists the turns worker"
        )
        stack.summarizer_name = wait_for(
            lambda: _worker_named(stack, summarizer.name), 30, "Flower lists the summarizer"
        )
        # Flower's event receiver is live once it has the workers' heartbeats.
        wait_for(
            lambda: all(
                stack.json("/api/workers?status=1").get(n)
                for n in (stack.chat_name, stack.summarizer_name)
            ),
            30,
            "Flower receives the workers' events",
            interval=0.2,
        )

        stack.marker = f"flower-must-not-see-{secrets.token_hex(8)}"
        session, user = f"flower-{uid}", f"u-{uid}"
        messages = ["hello", f"please keep this private: {stack.marker}", "thanks"]
        for message in messages:
            done = client.wait(client.enqueue(session, user, message).id, timeout=60)
            assert done.status is TurnStatus.SUCCEEDED, done.error
        stack.session_id = client.session(session, user).id

        # Queue lengths are real LLENs of the namespaced lists: with the summarize pool
        # paused, its queue holds compaction kicks (one may already sit in the paused
        # worker's BRPOP, so send two), and Flower counts them.
        summarize_q = stack_env["TURNQ_NAMESPACE"] + "summarize"
        summarizer.pause()
        try:
            for _ in range(2):
                celery.send_task(COMPACT_TASK, args=[stack.session_id])
            wait_for(
                lambda: stack.queue_lengths().get(summarize_q, 0) >= 1,
                30,
                f"Flower shows a waiting kick on {summarize_q}",
                interval=0.2,
            )
        finally:
            summarizer.resume()
        wait_for(
            lambda: stack.queue_lengths().get(summarize_q) == 0,
            60,
            f"{summarize_q} drained",
            interval=0.2,
        )
        wait_for(
            lambda: (
                len(_succeeded(stack.tasks("turnq.drain"))) >= len(messages)
                and len(_succeeded(stack.tasks("turnq.compact"))) >= 2
            ),
            60,
            "Flower saw the drains and the compactions succeed",
            interval=0.2,
        )
        yield stack
    finally:
        client.close()
        celery.close()
        proc.stop()
        summarizer.stop()
        chat.stop()


def _succeeded(tasks: dict[str, dict[str, Any]]) -> list[str]:
    return [k for k, t in tasks.items() if t.get("state") == "SUCCESS"]


def test_flower_requires_basic_auth(flower: FlowerStack) -> None:
    for path in ("/api/workers", "/api/tasks", "/api/queues/length", "/tasks", "/broker", "/"):
        assert flower.get(path, auth=False).status_code == 401, path
        wrong = httpx.get(flower.url + path, auth=(USER, "not-the-password"), timeout=10)
        assert wrong.status_code == 401, path
    # Flower's own exemptions, documented in docs/flower.md: never expose it publicly.
    assert flower.get("/healthcheck", auth=False).status_code == 200
    assert flower.get("/metrics", auth=False).status_code == 200
    # The password is not on Flower's command line (readable by every local user) or log.
    cmdline = Path(f"/proc/{flower.proc.pid}/cmdline").read_bytes().decode()
    assert flower.password not in cmdline
    assert "--read_only=True" in cmdline and "--enable_events=False" in cmdline
    assert flower.password not in flower.proc.log_text()
    assert f"Flower listening on {flower.url}/ (basic auth, user(s) {USER}" in (
        flower.proc.log_text()
    )


def test_flower_shows_both_pools_and_namespaced_queues(
    flower: FlowerStack, stack_env: dict[str, str]
) -> None:
    ns = stack_env["TURNQ_NAMESPACE"]
    workers = flower.json("/api/workers?refresh=1")
    queues_of = {
        name: {q["name"] for q in workers[name]["active_queues"]}
        for name in (flower.chat_name, flower.summarizer_name)
    }
    assert queues_of[flower.chat_name] == {f"{ns}turns", f"{ns}maintenance"}
    assert queues_of[flower.summarizer_name] == {f"{ns}summarize"}
    lengths = flower.queue_lengths()
    for q in ("turns", "summarize"):
        assert isinstance(lengths.get(ns + q), int), (ns + q, lengths)
    broker_page = flower.get("/broker").text
    assert f"{ns}turns" in broker_page and f"{ns}summarize" in broker_page


def test_task_args_are_ids_only_and_no_content_reaches_flower(flower: FlowerStack) -> None:
    drains = flower.tasks("turnq.drain")
    compactions = flower.tasks("turnq.compact")
    assert drains and compactions
    for task in [*drains.values(), *compactions.values()]:
        assert IDS_ONLY_ARGS.fullmatch(task["args"]), task["args"]
        assert task["args"] == f"['{flower.session_id}']"
        assert task["kwargs"] == "{}", task["kwargs"]
    assert {t["worker"] for t in drains.values() if t.get("worker")} == {flower.chat_name}
    assert {t["worker"] for t in compactions.values() if t.get("worker")} == {
        flower.summarizer_name
    }
    drain_id = _succeeded(drains)[0]
    for path in (
        "/api/tasks",
        f"/api/task/info/{drain_id}",
        "/api/workers",
        "/api/task/types",
        "/tasks",
        f"/task/{drain_id}",
        f"/worker/{flower.chat_name}",
        "/broker",
        "/metrics",
    ):
        assert flower.get(path).status_code == 200, path
    datatable = httpx.post(
        flower.url + "/tasks/datatable",
        auth=flower.auth,
        data=DATATABLE_QUERY,
        headers={"Sec-Fetch-Site": "same-origin"},
        timeout=10,
    )
    assert datatable.status_code == 200, datatable.text[:300]
    flower.seen.append(datatable.text)
    assert drain_id in "".join(flower.seen)
    leaked = [body[:200] for body in flower.seen if flower.marker in body]
    assert not leaked, leaked
    assert flower.marker not in flower.proc.log_text()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_tasks_page_in_a_real_browser(flower: FlowerStack, tmp_path: Path) -> None:
    exe = chromium()
    # Chromium answers Flower's basic-auth challenge from the URL's credentials, for the
    # page and for its /tasks/datatable requests.
    page = (
        f"http://{USER}:{flower.password}@127.0.0.1:{flower.url.rsplit(':', 1)[1]}"
        f"/tasks?worker={flower.chat_name}"
    )
    common = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,900", "--virtual-time-budget=10000",
    ]  # fmt: skip
    png = tmp_path / "flower-tasks.png"
    shot = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'profile-shot'}", f"--screenshot={png}", page],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert png.exists(), shot.stderr[-2000:]
    data = png.read_bytes()
    width, height = _png_size(data)
    assert (width, height) == (1400, 900)
    assert len(data) > 20_000, f"{len(data)} bytes: an empty page?"
    dom = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", page],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "<title>Tasks · Flower</title>" in html, html[:500]
    assert "turnq.drain" in html
    assert any(task_id in html for task_id in _succeeded(flower.tasks("turnq.drain")))
    assert flower.chat_name in html and "SUCCESS" in html
    assert flower.session_id in html  # the args column: the session's internal id, nothing else
    assert flower.marker not in html and flower.password not in html
    print(f"screenshot: {png}")


def _refused(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TURNQ, "flower", *args], env={**os.environ, **env}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_flower_refuses_to_start_without_auth(stack_env: dict[str, str]) -> None:
    env = {**stack_env, "TURNQ_FLOWER_BASIC_AUTH": ""}
    out = _refused(env, "--port", "1")
    assert out.returncode != 0 and "TURNQ_FLOWER_BASIC_AUTH" in out.stderr, out.stderr
    out = _refused(env, "--no-auth", "--address", "0.0.0.0", "--port", "1")
    assert out.returncode != 0 and "loopback" in out.stderr, out.stderr
    secret = secrets.token_hex(8)
    out = _refused({**stack_env, "TURNQ_FLOWER_BASIC_AUTH": f"ops:{secret},broken"}, "--port", "1")
    assert out.returncode != 0 and "entry 2" in out.stderr, out.stderr
    assert secret not in out.stdout + out.stderr
