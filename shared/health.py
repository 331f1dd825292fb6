"""Liveness and readiness of turnq processes, for Docker/compose and Kubernetes probes.

    turnq health --role worker                      # both probes (compose healthcheck)
    turnq health --role worker --probe liveness     # k8s livenessProbe
    turnq health --role worker --probe readiness    # k8s readinessProbe

* **Readiness**: this host reaches Redis (PING) and Postgres (``SELECT 1``) within the
  timeout.  Every role needs both.
* **Liveness** of a worker, summarizer or beat: its **heartbeat file** is fresh.  Each
  process writes ``<run_dir>/<namespace>/<role>/<hostname>-<pid>.json`` every
  ``liveness_interval_s`` (``HeartbeatFile``).  A worker writes it from its asyncio
  loop, and only while Celery's consumer loop also ticks, so a stuck turn loop, a
  stuck consumer and a SIGSTOPped process all stop the heartbeat; beat writes it from
  its scheduler tick.  ``turnq health`` fails when no live process of the role has a
  file or any has one older than ``liveness_stale_s``.  Files of dead processes are
  ignored (and removed).
* Liveness of the **gateway**: its HTTP port answers (any status: ``/healthz`` says
  503 when a dependency is down, which is a readiness matter).

Why a local file rather than ``celery inspect ping``: the probe costs no broker round
trip, works while Redis is down (a Redis outage must not make Kubernetes restart every
worker), and sees the asyncio loop where turns run, which a ping (answered by the
consumer thread) does not.  The price: the probe must run on the worker's host and
see its ``run_dir`` and PIDs (exec probes do; a sidecar needs a shared volume and
PID namespace).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.logging import redact
from shared.settings import Settings

Role = Literal["worker", "summarizer", "beat", "gateway"]
Probe = Literal["liveness", "readiness", "all"]
ROLES: tuple[Role, ...] = ("worker", "summarizer", "beat", "gateway")


def heartbeat_dir(settings: Settings, role: str) -> Path:
    ns = settings.namespace.replace(":", "_").strip("_") or "default"
    return Path(settings.run_dir) / ns / role


class HeartbeatFile:
    """``beat()`` rewrites this process's file (atomically) with the current time."""

    def __init__(self, settings: Settings, role: str) -> None:
        self.dir = heartbeat_dir(settings, role)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        self.path = self.dir / f"{socket.gethostname()}-{self.pid}.json"
        self._tmp = self.path.with_suffix(".tmp")
        for old in self.dir.glob("*.json"):  # leftovers of dead processes
            if old != self.path and not _pid_alive(_read(old).get("pid")):
                with contextlib.suppress(OSError):
                    old.unlink()

    def beat(self) -> None:
        data = {"pid": self.pid, "host": socket.gethostname(), "ts": time.time()}
        self._tmp.write_text(json.dumps(data))
        os.replace(self._tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


def _read(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is dead
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_heartbeat(settings: Settings, role: str, now: float | None = None) -> Check:
    now = time.time() if now is None else now
    folder = heartbeat_dir(settings, role)
    live: list[tuple[Path, float]] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = _read(path)
        if not _pid_alive(data.get("pid")):
            continue
        ts = data.get("ts")
        live.append((path, now - float(ts) if isinstance(ts, int | float) else float("inf")))
    if not live:
        return Check("heartbeat", False, f"no running {role} process has a heartbeat in {folder}")
    stale = [(p, age) for p, age in live if age > settings.liveness_stale_s]
    if stale:
        worst = max(stale, key=lambda x: x[1])
        return Check(
            "heartbeat",
            False,
            f"{len(stale)} of {len(live)} {role} heartbeat(s) older than "
            f"{settings.liveness_stale_s:g}s ({worst[0].name}: {worst[1]:.1f}s)",
        )
    newest = min(age for _, age in live)
    return Check("heartbeat", True, f"{len(live)} {role} process(es), newest {newest:.1f}s ago")


def check_redis(settings: Settings, timeout: float, role: str = "redis") -> Check:
    """PING the state Redis, or the broker (``role="broker"``, TURNQ_BROKER_URL)."""
    import redis

    started = time.perf_counter()
    try:
        url = settings.require_broker_url() if role == "broker" else settings.require_redis_url()
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return Check(role, False, redact(f"{type(exc).__name__}: {exc}")[:300])
    return Check(role, True, f"{(time.perf_counter() - started) * 1000:.1f} ms")


def check_postgres(settings: Settings, timeout: float) -> Check:
    import psycopg

    started = time.perf_counter()
    try:
        with psycopg.connect(
            settings.libpq_database_url, connect_timeout=max(2, round(timeout)), autocommit=True
        ) as conn:
            conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
            conn.execute("SELECT 1").fetchone()
    except Exception as exc:
        return Check("postgres", False, redact(f"{type(exc).__name__}: {exc}")[:300])
    return Check("postgres", True, f"{(time.perf_counter() - started) * 1000:.1f} ms")


def check_gateway(settings: Settings, timeout: float) -> Check:
    import httpx

    host = settings.gateway_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{host}:{settings.gateway_port}/healthz"
    try:
        response = httpx.get(url, timeout=timeout)
    except Exception as exc:
        return Check("gateway", False, f"{url}: {type(exc).__name__}: {exc}"[:300])
    return Check("gateway", True, f"{url} answered {response.status_code}")


def run_checks(settings: Settings, role: Role, probe: Probe, timeout: float) -> list[Check]:
    """All checks of the probe, in parallel; one not done within ``timeout`` fails."""
    jobs: list[tuple[str, Callable[[], Check]]] = []
    if probe in ("readiness", "all"):
        jobs.append(("redis", lambda: check_redis(settings, timeout)))
        if settings.separate_broker:
            jobs.append(("broker", lambda: check_redis(settings, timeout, "broker")))
        jobs.append(("postgres", lambda: check_postgres(settings, timeout)))
    if probe in ("liveness", "all"):
        if role == "gateway":
            jobs.append(("gateway", lambda: check_gateway(settings, timeout)))
        else:
            jobs.append(("heartbeat", lambda: check_heartbeat(settings, role)))
    results: dict[str, Check] = {}

    def run(name: str, fn: Callable[[], Check]) -> None:
        try:
            results[name] = fn()
        except Exception as exc:
            results[name] = Check(name, False, redact(f"{type(exc).__name__}: {exc}")[:300])

    threads = [
        threading.Thread(target=run, args=job, daemon=True, name=f"health-{job[0]}") for job in jobs
    ]
    deadline = time.monotonic() + timeout
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return [
        results.get(name) or Check(name, False, f"no answer in {timeout:g}s") for name, _ in jobs
    ]
