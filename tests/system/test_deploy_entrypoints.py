"""The commands and health checks of docker-compose.yml and ops/k8s, run for real.

There is no Docker engine here, so each container's command runs as a subprocess on
this host (``python -m producer.cli`` is what the image's ``turnq`` entry point runs),
with the environment compose would give it and the run's Redis and Postgres:

* every role's command parses (``--help``), and for the roles that exec Celery the exact
  Celery command line they exec is accepted by Celery with the worker app loaded;
* ``turnq migrate`` migrates;
* each role's compose healthcheck and Kubernetes probes pass while the role runs and
  fail once it is gone; the gateway's and Flower's HTTP checks pass and their /metrics
  answer without credentials (Prometheus scrapes them);
* the image's STOPSIGNAL makes a worker finish its running turn and exit 0 (warm
  shutdown) well inside the grace period;
* ``redis-cli`` / ``pg_isready`` accept the healthcheck arguments; ``kubectl kustomize
  ops/k8s`` renders, and what it renders passes the Kubernetes schemas.  A missing tool
  fails under ``CI=true`` (the setup installs them) and skips elsewhere.

Not verifiable without Docker or a cluster (docs/operations.md lists them): that the
image builds, that the official images ship redis-cli / pg_isready / wget, compose's
own parsing (profiles, merge keys, ``service_completed_successfully``), DNS discovery of
scaled replicas, KEDA and the probes as the kubelet runs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ops.processes import BEAT_READY, ROOT, WORKER_READY, ManagedProcess
from producer.flower import READY as FLOWER_READY
from producer.gateway.server import READY as GATEWAY_READY
from shared.status import TurnStatus
from tests.support.servers import free_port
from tests.support.tools import missing
from tests.system.test_pipeline import wait_for
from tests.unit.test_deploy_files import (
    CRD_KINDS,
    FAKE_HOST_ENV,
    container_env,
    deployment,
    dockerfile,
    duration_s,
    k8s,
    main_container,
    schema_problems,
    services,
)

pytestmark = pytest.mark.system

TURNQ = [sys.executable, "-m", "producer.cli"]
ROLES = ("migrate", "gateway", "worker", "summarizer", "beat", "flower")
READY = {"worker": WORKER_READY, "summarizer": WORKER_READY, "beat": BEAT_READY}

# Runs a turnq command but prints the argv it would exec instead of exec'ing it.
DRY_RUN = """
import json, os, sys
def _exec(path, argv, env=None):
    print("EXEC " + json.dumps(list(argv)), flush=True)
    os._exit(0)
os.execv = os.execve = _exec
from producer.cli import app
app(sys.argv[1:], prog_name="turnq")
"""


def host_env(role: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This host's environment minus turnq's, plus the role's compose environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURNQ_", "OPENAI_"))}
    env.update(container_env(services()[role], FAKE_HOST_ENV))
    env.update(PYTHONPATH=str(ROOT), OPENAI_AGENTS_DISABLE_TRACING="1")
    env.update(extra or {})
    return env


def run(
    argv: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def as_host_argv(test: list[str]) -> list[str]:
    """A compose/k8s check as this host runs it: `turnq` is `python -m producer.cli`."""
    argv = test[1:] if test[0] in ("CMD", "CMD-SHELL") else list(test)
    if argv[0] == "turnq":
        return [*TURNQ, *argv[1:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    return argv


# ------------------------------------------------------------------ commands parse
@pytest.mark.parametrize("role", ROLES)
def test_each_roles_command_parses(role: str, tmp_path: Path) -> None:
    env = host_env(role, {"TURNQ_DATA_DIR": str(tmp_path)})
    commands = [services()[role]["command"]]
    if role == "migrate":
        commands.append(main_container(k8s("Job")[0])["args"])
    else:
        commands.append(main_container(deployment(role))["args"])
    for command in commands:
        out = run([*TURNQ, *command, "--help"], env)
        assert out.returncode == 0 and "Usage:" in out.stdout, (command, out.stdout + out.stderr)


@pytest.mark.parametrize("role", ["worker", "summarizer", "beat", "flower"])
def test_the_celery_command_each_role_execs_is_accepted_by_celery(
    role: str, tmp_path: Path
) -> None:
    env = host_env(role, {"TURNQ_DATA_DIR": str(tmp_path)})
    out = run([sys.executable, "-c", DRY_RUN, *services()[role]["command"]], env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("EXEC ")]
    assert out.returncode == 0 and lines, out.stdout + out.stderr
    argv = json.loads(lines[0][5:])
    assert argv[:3] == [sys.executable, "-m", "celery"] and argv[3] == "-A", argv
    if role != "flower":  # flower's own options are tornado's; test_flower.py runs it
        out = run([*argv, "--help"], env, timeout=120)
        assert out.returncode == 0 and "Usage:" in out.stdout, out.stdout + out.stderr
    if role == "summarizer":
        assert argv[argv.index("-Q") + 1] == "summarize" and "summarize@%h" in argv
    if role == "worker":
        assert argv[argv.index("-Q") + 1] == "turns,maintenance"
        assert argv[argv.index("-P") + 1] == "threads"


def test_migrate_runs(stack_env: dict[str, str]) -> None:
    out = run([*TURNQ, *services()["migrate"]["command"]], host_env("migrate", stack_env))
    assert out.returncode == 0 and "newest schema" in out.stdout, out.stdout + out.stderr


# ------------------------------------------------------------------ health checks
@pytest.fixture
def role_env(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    def make(role: str, **extra: str) -> dict[str, str]:
        return host_env(
            role,
            {
                **stack_env,
                "TURNQ_ENV": "test",
                "TURNQ_AGENT": "tests.agents:echo",
                "TURNQ_MODEL_PROVIDER": "offline",
                "TURNQ_DATA_DIR": str(tmp_path / "data"),
                "TURNQ_RUN_DIR": str(tmp_path / "run"),
                "TURNQ_WORKER_CONCURRENCY": "8",
                **extra,
            },
        )

    yield make


@pytest.mark.parametrize("role", ["worker", "summarizer", "beat"])
def test_celery_roles_pass_their_healthchecks_while_up_and_fail_once_gone(
    role: str, role_env: Any
) -> None:
    port = free_port()
    env = role_env(role, TURNQ_METRICS_PORT=str(port))
    checks = [services()[role]["healthcheck"]["test"]]
    c = main_container(deployment(role))
    checks += [c[p]["exec"]["command"] for p in ("startupProbe", "livenessProbe", "readinessProbe")]
    proc = ManagedProcess(
        [*TURNQ, *services()[role]["command"]], env, f"deploy-{role}", ready=READY[role]
    )
    with proc:
        for check in checks:
            wait_for(lambda c=check: run(as_host_argv(c), env).returncode == 0, 30, str(check))
        if role != "beat":  # what Prometheus scrapes (prometheus.yml: TURNQ_METRICS_PORT)
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            assert "turnq_turns_total" in text or "turnq_compactions_total" in text
    liveness = c["livenessProbe"]["exec"]["command"]
    out = run(as_host_argv(liveness), env)
    assert out.returncode == 1, f"{role} is gone but its liveness probe passes: {out.stdout}"


def test_gateway_healthcheck_probes_and_metrics(role_env: Any) -> None:
    port = free_port()
    env = role_env("gateway", TURNQ_GATEWAY_HOST="127.0.0.1", TURNQ_GATEWAY_PORT=str(port))
    check = services()["gateway"]["healthcheck"]["test"]
    assert ":8000/" in check[-1]
    check = [*check[:-1], check[-1].replace(":8000/", f":{port}/")]
    readiness = main_container(deployment("gateway"))["readinessProbe"]["httpGet"]["path"]
    with ManagedProcess([*TURNQ, "gateway"], env, "deploy-gateway", ready=GATEWAY_READY):
        out = run(as_host_argv(check), env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert httpx.get(f"http://127.0.0.1:{port}{readiness}", timeout=10).status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert metrics.status_code == 200 and "turnq_" in metrics.text
        out = run([*TURNQ, "health", "--role", "gateway", "--probe", "liveness"], env)
        assert out.returncode == 0, out.stdout
    out = run(as_host_argv(check), env)
    assert out.returncode != 0, "the gateway is gone but its healthcheck passes"


def test_flower_healthcheck_auth_and_metrics(role_env: Any) -> None:
    port = free_port()
    env = role_env(
        "flower", TURNQ_FLOWER_ADDRESS="127.0.0.1", TURNQ_FLOWER_PORT=str(port)
    )  # TURNQ_FLOWER_BASIC_AUTH comes from compose: ${FLOWER_BASIC_AUTH:?...}
    check = services()["flower"]["healthcheck"]["test"]
    check = [*check[:-1], check[-1].replace(":5555/", f":{port}/")]
    base = f"http://127.0.0.1:{port}"
    with ManagedProcess([*TURNQ, "flower"], env, "deploy-flower", ready=FLOWER_READY):
        out = run(as_host_argv(check), env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert httpx.get(f"{base}/", timeout=10).status_code == 401
        user, password = FAKE_HOST_ENV["FLOWER_BASIC_AUTH"].split(":")
        assert httpx.get(f"{base}/", auth=(user, password), timeout=10).status_code == 200
        metrics = httpx.get(f"{base}/metrics", timeout=10)  # Prometheus has no credentials
        assert metrics.status_code == 200 and "flower_" in metrics.text


# ------------------------------------------------------------------ graceful shutdown
def test_stop_signal_lets_the_running_turn_finish_inside_the_grace_period(
    role_env: Any, uid: str
) -> None:
    from producer import Client

    stop = dict(dockerfile())["STOPSIGNAL"]
    grace = duration_s(services()["worker"]["stop_grace_period"])
    env = role_env("worker", TURNQ_AGENT="tests.agents:slow_echo", TEST_MODEL_LATENCY_S="3")
    worker = ManagedProcess(
        [*TURNQ, *services()["worker"]["command"]], env, "deploy-stop", ready=WORKER_READY
    )
    worker.start()
    client = Client.from_settings()
    try:
        turn = client.enqueue(f"stop-{uid}", f"u-{uid}", "finish me before you go")
        wait_for(lambda: client.get_turn(turn.id).status is TurnStatus.RUNNING, 30, "not running")
        started = time.monotonic()
        assert worker.proc is not None
        worker.proc.send_signal(getattr(signal, stop))
        code = worker.proc.wait(grace)
        took = time.monotonic() - started
        done = client.get_turn(turn.id)
    finally:
        worker.stop()
        client.close()
    assert code == 0, worker.log_text()[-3000:]
    assert done.status is TurnStatus.SUCCEEDED and done.attempts == 1
    assert took < grace / 2, f"warm shutdown took {took:.1f}s of a {grace:.0f}s grace period"
    assert "Warm shutdown" in worker.log_text()


# ------------------------------------------------------------------ third-party tools
@pytest.mark.parametrize("service", ["redis", "postgres"])
def test_official_image_healthcheck_arguments_are_valid(service: str) -> None:
    """Only the arguments: that redis:7 / postgres:16 ship these tools is not checked here."""
    argv = as_host_argv(services()[service]["healthcheck"]["test"])
    if shutil.which(argv[0]) is None:
        missing(f"{argv[0]} is not installed on this host (it comes with {service})")
    out = run(argv, dict(os.environ), timeout=15)
    if out.returncode != 0 and "no response" in out.stdout + out.stderr:
        missing(f"no local {service} on its default address (make services starts it)")
    assert out.returncode == 0, out.stdout + out.stderr


def test_kustomize_renders_every_manifest_with_the_image() -> None:
    kubectl = shutil.which("kubectl") or shutil.which("kubectl", path=Path(sys.executable).parent)
    if kubectl is None:
        missing("kubectl is not installed (ops/scripts/ensure-services.sh installs it)")
    out = run([kubectl, "kustomize", str(ROOT / "ops" / "k8s")], dict(os.environ))
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(docs) == len(k8s_docs_all())
    images = set(re.findall(r"image: (\S+)", out.stdout))
    assert images == {"turnq:0.1.0"}, images
    for d in docs:
        assert d["metadata"].get("namespace", "turnq") == "turnq"
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "turnq"
    problems, unknown = schema_problems(docs)
    assert not problems, problems
    assert unknown == CRD_KINDS


def k8s_docs_all() -> list[dict[str, Any]]:
    return [d for kind in ("Namespace", "ConfigMap", "Job", "Deployment", "Service",
                           "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication")
            for d in k8s(kind)]  # fmt: skip
