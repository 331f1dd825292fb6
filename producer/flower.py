"""``turnq flower``: Flower on turnq's queues, behind basic auth.

    plan = flower_plan(get_settings(), port=5555, address="127.0.0.1")
    print(plan.describe())             # where it listens and who may log in; never a password
    os.execve(plan.argv[0], plan.argv, plan.env)

Why it is built this way:

* **Auth is required.** Credentials come from ``TURNQ_FLOWER_BASIC_AUTH`` and reach Flower
  in its environment (``FLOWER_BASIC_AUTH``), not on its command line, which any local
  user can read with ``ps``.  Without them Flower starts only with an explicit
  ``--no-auth`` on a loopback address.  ``--conf`` points at an empty file so that a stray
  ``flowerconfig.py`` in the working directory cannot replace the credentials.
* **Read-only unless ``--allow-control``**: Flower's API can otherwise shut down workers,
  resize pools and revoke tasks.
* **Flower never switches task events on** (``--enable_events=False``): its default
  broadcasts ``enable_events`` to every worker on the broker each minute, overriding
  ``TURNQ_TASK_EVENTS=false`` (and reaching other deployments that share the Redis).
* **``max_tasks`` 10,000**: Flower 2's default of 100,000 grows its memory (mher/flower#1305).
* Queue lengths need no ``--broker_api`` on Redis: Flower ``LLEN``s the queues workers
  report consuming, which are turnq's namespaced names (see ``producer/flower_app.py``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.settings import Settings

READY = "Visit me at"  # Flower's log line once its HTTP server is bound
FLOWER_APP = "producer.flower_app"
AUTH_VAR = "TURNQ_FLOWER_BASIC_AUTH"
STATE_SAVE_INTERVAL_MS = 60_000
# args is the session's internal id (task messages carry ids only): worth a column.
TASKS_COLUMNS = "name,state,args,worker,received,runtime,uuid"
# Never inherited: turnq decides Flower's credentials, and an unauthenticated API also
# answers cross-origin requests from any web page (Access-Control-Allow-Origin: *).
_DROPPED_ENV = ("FLOWER_BASIC_AUTH", "FLOWER_UNAUTHENTICATED_API")
_USER = re.compile(r"[^\s:,]+")


class FlowerConfigError(RuntimeError):
    """A refusal to start, with the fix in its message (never a credential)."""


@dataclass(frozen=True)
class FlowerPlan:
    argv: list[str]
    env: dict[str, str]
    url: str
    users: list[str]
    read_only: bool
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        who = f"basic auth, user(s) {', '.join(self.users)}" if self.users else "NO AUTH (loopback)"
        mode = "read-only" if self.read_only else "control enabled"
        return f"Flower listening on {self.url} ({who}; {mode})"


def parse_basic_auth(value: str) -> list[str]:
    """``user:password[,user2:password2]`` -> the user names.  Errors never echo the value."""
    users = []
    for n, entry in enumerate(value.split(","), 1):
        user, sep, password = entry.partition(":")
        if not sep or not password or not _USER.fullmatch(user):
            raise FlowerConfigError(
                f"{AUTH_VAR}: entry {n} is not user:password (user names have no spaces, "
                "colons or commas; passwords are not empty and have no commas); value not shown"
            )
        users.append(user)
    return users


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # "", "0.0.0.0"-style wildcards parse; host names do not
        return False


def flower_plan(
    settings: Settings,
    *,
    port: int | None = None,
    address: str | None = None,
    no_auth: bool = False,
    allow_control: bool = False,
    persistent: bool = False,
    max_tasks: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> FlowerPlan:
    port = settings.flower_port if port is None else port
    address = settings.flower_address if address is None else address
    max_tasks = settings.flower_max_tasks if max_tasks is None else max_tasks
    env = dict(os.environ if environ is None else environ)
    for name in _DROPPED_ENV:
        env.pop(name, None)
    credentials = (settings.flower_basic_auth or "").strip()
    warnings = []
    users: list[str] = []
    if no_auth:
        if not is_loopback(address):
            raise FlowerConfigError(
                f"--no-auth only on a loopback address (127.0.0.1, ::1, localhost), "
                f"not {address or 'all interfaces'!r}; set {AUTH_VAR}=user:password instead"
            )
        if credentials:
            warnings.append(f"--no-auth: {AUTH_VAR} is set but not used")
    elif not credentials:
        raise FlowerConfigError(
            f"Flower needs a password: set {AUTH_VAR}=user:password[,user2:password2] "
            "(or pass --no-auth to run unprotected on a loopback address)"
        )
    else:
        users = parse_basic_auth(credentials)
        env["FLOWER_BASIC_AUTH"] = credentials
    if not is_loopback(address):
        warnings.append(
            "Flower serves /metrics and /healthcheck without auth, and basic auth travels in "
            "clear over HTTP: keep it on a private network or behind a TLS proxy"
        )
    if not settings.task_events:
        warnings.append("TURNQ_TASK_EVENTS is off: Flower shows workers and queues but no tasks")
    if max_tasks < 1:
        raise FlowerConfigError("--max-tasks must be at least 1")
    argv = [
        sys.executable, "-m", "celery", "-A", FLOWER_APP, "flower",
        f"--address={address}", f"--port={port}", f"--conf={os.devnull}",
        f"--max_tasks={max_tasks}", "--enable_events=False",
        f"--read_only={not allow_control}", f"--persistent={persistent}",
        f"--tasks_columns={TASKS_COLUMNS}",
    ]  # fmt: skip
    if persistent:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        argv += [
            f"--db={settings.data_dir / 'flower.db'}",
            f"--state_save_interval={STATE_SAVE_INTERVAL_MS}",
        ]
    host = f"[{address}]" if ":" in address else (address or "0.0.0.0")
    return FlowerPlan(
        argv=argv,
        env=env,
        url=f"http://{host}:{port}/",
        users=users,
        read_only=not allow_control,
        warnings=warnings,
    )
