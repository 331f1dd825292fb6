"""Run the whole system on one machine: what ``turnq dev`` and ``turnq demo`` do.

    with DevRun(get_settings(), console) as run:
        run.start(workers=1)          # stack (embedded unless URLs are set), migrate, processes
        client = run.client()

Processes are real: ``celery worker`` and ``celery beat`` subprocesses, exactly what
production runs, with their logs in ``<data_dir>/logs``.  Each runs in its own process
group, so a terminal's signals reach only this process, whose ``stop()`` ends them in order
before the embedded servers.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING, Self

from rich.console import Console
from rich.table import Table

from ops.devstack import EmbeddedStack, ensure_stack, port_or_free
from ops.migrate import upgrade
from ops.processes import BEAT_READY, WORKER_READY, ManagedProcess, beat_command, worker_command
from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from producer.client import Client
    from producer.flower import FlowerPlan

FLOWER_USER = "turnq"


class DevRun:
    def __init__(self, settings: Settings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.stack: EmbeddedStack | None = None
        self.redis_url = ""
        self.database_url = ""
        self.processes: list[ManagedProcess] = []
        self.dev_key: str | None = None
        self.gateway_url: str | None = None
        self.flower: FlowerPlan | None = None
        self.flower_password: str | None = None  # generated; None when the user set one
        self._clients: list[Client] = []

    def start(
        self, *, workers: int = 1, beat: bool = True, gateway: bool = False, flower: bool = False
    ) -> None:
        began = time.monotonic()
        with self.console.status("starting Redis and Postgres…"):
            self.stack, self.redis_url, self.database_url = ensure_stack(self.settings)
        with self.console.status("migrating the database…"):
            upgrade(self.database_url)
        # Every process started from here, and this one, uses these URLs.
        env = {"TURNQ_REDIS_URL": self.redis_url, "TURNQ_DATABASE_URL": self.database_url}
        os.environ.update(env)
        get_settings.cache_clear()
        self.settings = get_settings()
        logs = self.settings.data_dir / "logs"
        ns = self.settings.namespace
        specs: list[tuple[str, list[str], str]] = [
            (
                f"worker-{i}",
                worker_command(
                    name=f"turns{i}",
                    queues=[ns + "turns", ns + "maintenance"],
                    concurrency=self.settings.worker_concurrency,
                    pool=self.settings.worker_pool,
                ),
                WORKER_READY,
            )
            for i in range(1, workers + 1)
        ]
        if workers:
            specs.append(
                (
                    "summarizer",
                    worker_command(
                        name="summarize",
                        queues=[ns + "summarize"],
                        concurrency=4,
                        pool=self.settings.worker_pool,
                    ),
                    WORKER_READY,
                )
            )
        if beat:
            specs.append(
                ("beat", beat_command(self.settings.data_dir / "celerybeat-schedule"), BEAT_READY)
            )
        if gateway:
            from producer.gateway.keys import create_key
            from producer.gateway.server import READY as GATEWAY_READY

            self.dev_key = create_key(self.database_url, "dev", "turnq dev")
            cmd = [sys.executable, "-m", "producer.cli", "gateway"]
            cmd += ["--host", self.settings.gateway_host, "--port", str(self.settings.gateway_port)]
            specs.append(("gateway", cmd, GATEWAY_READY))
        if flower:
            from producer.flower import READY as FLOWER_READY

            self.flower = self._flower_plan()
            specs.append(("flower", self.flower.argv, FLOWER_READY))
        with self.console.status(f"starting {len(specs)} processes…"):
            for name, cmd, ready in specs:
                proc = ManagedProcess(
                    cmd,
                    self.flower.env if self.flower and name == "flower" else env,
                    name,
                    ready=ready,
                    log_path=logs / f"{name}.log",
                    own_process_group=True,
                )
                self.processes.append(proc)
                proc.start()
        for p in self.processes:
            if p.name == "gateway":
                found = re.search(r"listening on (http://\S+)", p.log_text())
                self.gateway_url = found.group(1) if found else None
        self.console.print(f"[green]up in {time.monotonic() - began:.1f}s[/green]")

    def _flower_plan(self) -> FlowerPlan:
        """Flower behind basic auth, so a new user can watch the queues at once.

        The password is generated unless ``TURNQ_FLOWER_BASIC_AUTH`` sets one, and reaches
        Flower in its environment, never on its command line (readable by any local user).
        ``TURNQ_FLOWER_PORT`` if free, else any free port.
        """
        from producer.flower import flower_plan

        auth = self.settings.flower_basic_auth
        if not auth:
            self.flower_password = secrets.token_urlsafe(18)
            auth = f"{FLOWER_USER}:{self.flower_password}"
        address = self.settings.flower_address
        plan = flower_plan(
            self.settings.model_copy(update={"flower_basic_auth": auth}),
            port=port_or_free(address, self.settings.flower_port),
        )
        for warning in plan.warnings:
            self.console.print(f"[yellow]flower: {warning}[/yellow]")
        return plan

    def client(self) -> Client:
        from producer.client import Client

        c = Client.from_settings(self.settings)
        self._clients.append(c)
        return c

    def print_summary(self) -> None:
        table = Table(title="turnq dev")
        for col in ("component", "where", "pid / log"):
            table.add_column(col)
        kind = "embedded" if self.stack else "configured"
        table.add_row(f"Redis ({kind})", self.redis_url, "")
        table.add_row(f"Postgres ({kind})", self.database_url, "")
        for p in self.processes:
            table.add_row(p.name, " ".join(p.args[3:7]), f"{p.pid}  {p.log_path}")
        self.console.print(table)
        self.console.print(
            "talk to it:  [bold]turnq chat my-session --user me[/bold]   "
            f"(finds this stack through {self.settings.data_dir / 'stack.json'})"
        )
        if self.flower is not None:
            login = (
                f"user {FLOWER_USER}   password [bold]{self.flower_password}[/bold]"
                if self.flower_password
                else f"user(s) {', '.join(self.flower.users)} (password: TURNQ_FLOWER_BASIC_AUTH)"
            )
            self.console.print(f"Flower:      {self.flower.url}   {login}")
        if self.gateway_url and self.dev_key:
            self.console.print(f"HTTP API:    {self.gateway_url}   (docs: {self.gateway_url}/docs)")
            self.console.print(f"Approvals:   {self.gateway_url}/review   (sign in with a key)")
            self.console.print(f"dev API key (user dev, shown once): [bold]{self.dev_key}[/bold]")
            self.console.print(
                f"  curl -H 'Authorization: Bearer {self.dev_key}' {self.gateway_url}/v1/sessions"
            )

    def watch(self) -> None:
        """Block until a process dies (reported) or Ctrl-C."""
        while True:
            for p in self.processes:
                if not p.alive():
                    self.console.print(f"[red]{p.name} exited; see {p.log_path}[/red]")
                    return
            time.sleep(0.5)

    def stop(self) -> None:
        for c in self._clients:
            try:
                c.close()
            except Exception:
                self.console.print("[yellow]a client did not close cleanly[/yellow]")
        for p in reversed(self.processes):
            p.stop()
        if self.stack is not None:
            self.stack.stop()
            self.stack = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
