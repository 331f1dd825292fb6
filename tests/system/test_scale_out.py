"""Scale-out: three worker "machines" on one Redis and one Postgres keep every invariant.

Each worker runs, when this host allows it (root, ``ip netns``, ``socat``), in its own
**network namespace** with its own hostname (``unshare --uts``): it reaches Redis and
Postgres only through a veth pair and a forwarder on the host side, like a separate
machine on a LAN.  Without those privileges it falls back to a separate UTS namespace
(its own hostname, shared network), then to distinct Celery node names only; the test
prints which isolation it ran with.

30 sessions x 10 turns: every turn runs exactly once (one ``turn finished`` line across
all workers' logs per turn), turns spread over all three workers, and per session the
history is complete, in order, and no two turns overlapped (``assert_consistent``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from ops.processes import WORKER_READY, ManagedProcess, worker_command
from producer import Client
from shared.status import TurnStatus
from tests.conftest import RUN_ID
from tests.system.test_pipeline import assert_consistent

pytestmark = [pytest.mark.system]

WORKERS = 3
SESSIONS = 30
TURNS_PER_SESSION = 10


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def _with_host(url: str, host: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    port = parts.port
    target = f"{host}:{port}" if port else host
    return urlunsplit(
        parts._replace(netloc=f"{netloc[0]}@{target}" if len(netloc) == 2 else target)
    )


@dataclass
class Machine:
    """One worker "machine": a hostname, maybe its own network, and its process."""

    index: int
    hostname: str
    mode: str  # netns | uts | names
    prefix: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    netns: str | None = None
    forwarders: list[subprocess.Popen[bytes]] = field(default_factory=list)
    process: ManagedProcess | None = None

    def teardown(self) -> None:
        if self.process is not None:
            self.process.stop()
        for f in self.forwarders:
            f.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                f.wait(5)
        if self.netns:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30)


def _isolation_available() -> str:
    if shutil.which("unshare") is None:
        return "names"
    probe = subprocess.run(
        ["unshare", "--uts", "true"], capture_output=True, timeout=10, check=False
    )
    if probe.returncode != 0:
        return "names"
    if any(shutil.which(tool) is None for tool in ("ip", "ss", "socat")):
        return "uts"
    name = f"tqprobe{RUN_ID}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, timeout=10)
    if made.returncode != 0:
        return "uts"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return "netns"


def _listening(host: str, port: int) -> bool:
    out = subprocess.run(
        ["ss", "-ltnH", f"src {host}:{port}"], capture_output=True, text=True, timeout=10
    ).stdout
    return f"{host}:{port}" in out


def _netns_machine(m: Machine, base_env: dict[str, str], subnet: int) -> None:
    """veth pair host<->namespace, and socat forwarders on the host end to 127.0.0.1."""
    ns = f"turnq-{RUN_ID}-{m.index}"
    host_if, ns_if = f"tqh{RUN_ID}{m.index}", f"tqn{RUN_ID}{m.index}"
    host_ip, ns_ip = f"10.{subnet}.{m.index}.1", f"10.{subnet}.{m.index}.2"
    _run("ip", "netns", "add", ns)
    m.netns = ns
    _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
    _run("ip", "link", "set", ns_if, "netns", ns)
    _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
    _run("ip", "link", "set", host_if, "up")
    _run("ip", "-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
    _run("ip", "-n", ns, "link", "set", ns_if, "up")
    _run("ip", "-n", ns, "link", "set", "lo", "up")
    urls = {}
    for var in ("TURNQ_REDIS_URL", "TURNQ_DATABASE_URL"):
        url = base_env[var]
        parts = urlsplit(url)
        assert parts.hostname in ("127.0.0.1", "localhost") and parts.port, url
        m.forwarders.append(
            subprocess.Popen(
                [
                    "socat",
                    f"TCP-LISTEN:{parts.port},bind={host_ip},fork,reuseaddr,backlog=512",
                    f"TCP:127.0.0.1:{parts.port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 10
        while not _listening(host_ip, parts.port):
            assert time.monotonic() < deadline, f"socat never listened on {host_ip}:{parts.port}"
            time.sleep(0.05)
        urls[var] = _with_host(url, host_ip)
    m.env.update(urls)
    m.prefix = ["ip", "netns", "exec", ns]


@pytest.fixture
def machines(worker_env: dict[str, str]) -> Iterator[list[Machine]]:
    mode = _isolation_available()
    print(f"\nscale-out isolation: {mode}")
    subnet = 100 + zlib.crc32(RUN_ID.encode()) % 150
    started: list[Machine] = []
    try:
        for i in range(1, WORKERS + 1):
            m = Machine(i, f"turnq-host{i}-{RUN_ID}", mode)
            started.append(m)
            if mode == "netns":
                _netns_machine(m, worker_env, subnet)
            if mode in ("netns", "uts"):
                m.prefix += [
                    "unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', m.hostname
                ]  # fmt: skip
            ns = worker_env["TURNQ_NAMESPACE"]
            cmd = worker_command(
                name=f"scale{i}", queues=[ns + "turns", ns + "maintenance"], concurrency=50
            )
            env = {
                **worker_env,
                "TURNQ_AGENT": "tests.agents:slow_echo",
                "TEST_MODEL_LATENCY_S": "0.05",
                **m.env,
            }
            m.process = ManagedProcess([*m.prefix, *cmd], env, f"scale{i}", ready=WORKER_READY)
            m.process.start()
        yield started
    finally:
        for m in reversed(started):
            m.teardown()


def turn_events(log: str) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in log.splitlines()
        if line.startswith("{") and '"turn finished"' in line
    ]


def test_three_machines_thirty_sessions_ten_turns(
    machines: list[Machine], client: Client, uid: str
) -> None:
    user = f"u-{uid}"
    sessions = [f"scale{i}-{uid}" for i in range(SESSIONS)]
    plan = {s: [f"{s} message {j}" for j in range(TURNS_PER_SESSION)] for s in sessions}

    def enqueue_session(s: str) -> list[str]:
        return [client.enqueue(s, user, m).id for m in plan[s]]

    with ThreadPoolExecutor(8) as pool:
        ids_by_session = dict(zip(sessions, pool.map(enqueue_session, sessions), strict=True))
    all_ids = [t for ids in ids_by_session.values() for t in ids]
    for tid in all_ids:
        assert client.wait(tid, timeout=180).status is TurnStatus.SUCCEEDED

    for s in sessions:
        assert_consistent(client, s, user, plan[s])
        # Each turn saw every earlier turn of its session, whichever machine ran them.
        outputs = [client.get_turn(t).output for t in ids_by_session[s]]
        assert outputs == [f"echo: {m} [ctx={2 * j + 1}]" for j, m in enumerate(plan[s])]

    ran: Counter[str] = Counter()
    per_machine: dict[str, int] = {}
    for m in machines:
        assert m.process is not None
        events = turn_events(m.process.log_text())
        per_machine[m.hostname] = len(events)
        ran.update(e["turn_id"] for e in events)
        if m.mode in ("netns", "uts"):
            assert {e["host"] for e in events} <= {m.hostname}, "a worker reported another host"
        if m.mode == "netns":
            redis_host = urlsplit(m.env["TURNQ_REDIS_URL"]).hostname
            assert f"{redis_host}:" in m.process.log_text(), "worker bypassed its own network"
    print(f"turns per machine: {per_machine}")
    assert sorted(ran) == sorted(all_ids), "a turn was lost or not logged"
    assert max(ran.values()) == 1, "a turn ran to completion twice"
    assert all(n > 0 for n in per_machine.values()), f"a machine ran nothing: {per_machine}"
    assert sum(per_machine.values()) == SESSIONS * TURNS_PER_SESSION
