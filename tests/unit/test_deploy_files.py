"""The deployment files, read the way their tools read them (no Docker, no cluster).

docker-compose.yml, Dockerfile, .dockerignore, ops/k8s/*.yaml, ops/prometheus/*.yml and
ops/grafana/turnq-dashboard.json are parsed here and checked against the code they
deploy: every TURNQ_* variable is a field of ``shared.settings.Settings`` (and each
role's environment builds a valid ``Settings``), every command is a ``turnq``
subcommand, every probe names a role ``turnq health`` knows, every metric an alert or a
panel uses is one turnq exports (or Flower does).  ``promtool`` (Debian: ``apt-get
install prometheus``) also parses the rules and every dashboard query and shows each alert
firing on its synthetic incident (ops/prometheus/alerts.test.yml), and every Kubernetes
object is validated against the Kubernetes API's JSON schemas (``kubernetes-validate``,
which ships them: no cluster, no download).  A missing tool fails under ``CI=true``.  What
still needs Docker or a cluster is listed in docs/operations.md.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from pydantic import AliasChoices

from producer.cli import app as turnq_cli
from shared.celery_app import make_celery
from shared.health import ROLES
from shared.keys import TURNS_QUEUE, queue
from shared.settings import Settings
from tests.support.tools import missing

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "ops" / "k8s"
PROM = ROOT / "ops" / "prometheus"
DASHBOARD = ROOT / "ops" / "grafana" / "turnq-dashboard.json"

TURNQ_ROLES = {"migrate", "gateway", "worker", "summarizer", "beat", "flower"}
STATEFUL = {"redis", "postgres", "prometheus", "grafana"}
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH")
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|BASIC_AUTH")
FAKE_HOST_ENV = {"POSTGRES_PASSWORD": "pw123", "FLOWER_BASIC_AUTH": "admin:s3cret"}

# The metric contract (name -> type, labels).  Agreed with the engineers building the
# worker, gateway and beat metrics; alerts and the dashboard may use only these, the
# cluster gauges turnq already exports, Flower's own metrics and Prometheus' `up`.
AGREED_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "turnq_turns_total": ("counter", ("status",)),
    "turnq_queue_depth": ("gauge", ("queue",)),
    "turnq_turn_queue_wait_seconds": ("histogram", ()),
    "turnq_turn_run_seconds": ("histogram", ()),
    "turnq_model_seconds": ("histogram", ()),
    "turnq_turn_tokens": ("histogram", ("kind",)),
    "turnq_context_tokens": ("histogram", ()),
    "turnq_compactions_total": ("counter", ("strategy", "status")),
    "turnq_emergency_trims_total": ("counter", ()),
    "turnq_lock_contention_total": ("counter", ()),
    "turnq_reaper_recoveries_total": ("counter", ()),
    "turnq_oldest_queued_turn_age_seconds": ("gauge", ()),
    "turnq_sessions_over_budget": ("gauge", ()),
    "turnq_http_requests_total": ("counter", ("route", "status")),
    "turnq_approvals_requested_total": ("counter", ()),
    "turnq_approvals_decided_total": ("counter", ("decision",)),
    "turnq_approval_decision_seconds": ("histogram", ()),
}
CLUSTER_EXTRAS = {
    "turnq_turns_by_status": ("gauge", ("status",)),
    "turnq_cluster_snapshot_age_seconds": ("gauge", ()),
}
FLOWER_METRICS = {
    "flower_events_total": ("counter", ("worker", "type", "task")),
    "flower_task_runtime_seconds": ("histogram", ("worker", "task")),
    "flower_task_prefetch_time_seconds": ("gauge", ("worker", "task")),
    "flower_worker_prefetched_tasks": ("gauge", ("worker", "task")),
    "flower_worker_online": ("gauge", ("worker",)),
    "flower_worker_number_of_currently_executing_tasks": ("gauge", ("worker",)),
}
KNOWN_METRICS = {
    **AGREED_METRICS,
    **CLUSTER_EXTRAS,
    **FLOWER_METRICS,
    "up": ("gauge", ("job", "instance")),
}
TARGET_LABELS = {"job", "instance", "pod"}


# ------------------------------------------------------------------------------ helpers
def settings_env_names() -> set[str]:
    """Every environment variable Settings reads (prefix + field name, or its aliases)."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias or field.alias
        if isinstance(alias, AliasChoices):
            names |= {c.upper() for c in alias.choices if isinstance(c, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add((prefix + name).upper())
    return names


class MissingVariable(Exception):
    pass


_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:\?|\?|:-|-)(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}`` substitution."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m["name"], m["op"], m["arg"] or ""
        val = env.get(name)
        if op in (":?", "?") and (val is None or (op == ":?" and not val)):
            raise MissingVariable(f"{name}: {arg}")
        if op == ":-":
            return val or arg
        if op == "-":
            return arg if val is None else val
        return val or ""

    return _VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def services() -> dict[str, dict[str, Any]]:
    svc: dict[str, dict[str, Any]] = compose()["services"]
    return svc


def turnq_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services().items() if "build" in s}


def container_env(service: Mapping[str, Any], host: Mapping[str, str]) -> dict[str, str]:
    """The service's environment as the container sees it (``KEY:`` with no value passes
    the host's value through, or nothing)."""
    out = {}
    for key, value in (service.get("environment") or {}).items():
        if value is None:
            if key in host:
                out[key] = host[key]
        else:
            out[key] = interpolate(str(value), host)
    return out


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def duration_s(text: str | int) -> float:
    if isinstance(text, int):
        return float(text)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def soft_shutdown_s() -> float:
    return float(make_celery(Settings()).conf.worker_soft_shutdown_timeout)


def cli_commands() -> set[str]:
    return set(typer.main.get_command(turnq_cli).commands)  # type: ignore[attr-defined]


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def deployment(role: str) -> dict[str, Any]:
    (d,) = k8s("Deployment", f"turnq-{role}")
    return d


def main_container(workload: Mapping[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = workload["spec"]["template"]["spec"]["containers"][0]
    return container


def configmap() -> dict[str, str]:
    (cm,) = k8s("ConfigMap", "turnq-config")
    return {k: str(v) for k, v in cm["data"].items()}


def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No TURNQ_/OPENAI_ variables from the test run leak into Settings()."""
    import os

    for key in list(os.environ):
        if key.startswith(("TURNQ_", "OPENAI_")):
            monkeypatch.delenv(key)
    yield monkeypatch


# ------------------------------------------------------------------------------ compose
def test_compose_has_every_role_and_each_command_is_a_turnq_subcommand() -> None:
    svc = services()
    assert set(svc) == TURNQ_ROLES | STATEFUL
    assert set(turnq_services()) == TURNQ_ROLES
    entry = json.loads(dict(dockerfile())["ENTRYPOINT"])
    assert entry[-1] == "turnq", "commands below are turnq subcommands: the image runs turnq"
    for name, s in turnq_services().items():
        assert s["image"] == svc["worker"]["image"] and s["build"] == ".", name
        command = s["command"]
        assert isinstance(command, list) and command[0] in cli_commands(), (name, command)
    expected = {
        "migrate": ["migrate"],
        "gateway": ["gateway"],
        "worker": ["worker", "--queues", "turns,maintenance"],
        "beat": ["beat"],
        "flower": ["flower"],
    }
    for name, command in expected.items():
        assert svc[name]["command"] == command
    assert svc["summarizer"]["command"][:3] == ["worker", "--queues", "summarize"]


def test_stateful_services_have_a_healthcheck_and_a_named_volume() -> None:
    volumes = set(compose()["volumes"])
    for name in STATEFUL:
        s = services()[name]
        assert "build" not in s and s["image"], name
        test = s["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        named = {str(v).split(":")[0] for v in s["volumes"]}
        assert named & volumes, f"{name} keeps its data in no named volume"
    # The tools the official images ship (not verifiable here without pulling them).
    assert services()["redis"]["healthcheck"]["test"][1] == "redis-cli"
    assert services()["postgres"]["healthcheck"]["test"][1] == "pg_isready"
    assert services()["redis"]["image"].startswith("redis:")
    assert services()["postgres"]["image"].startswith("postgres:")


def test_dependents_wait_for_healthy_or_completed_dependencies() -> None:
    svc = services()
    for name, s in svc.items():
        for dep, rule in (s.get("depends_on") or {}).items():
            assert isinstance(rule, dict), f"{name} -> {dep}: use the long form with a condition"
            cond = rule["condition"]
            if cond == "service_healthy":
                check = svc[dep].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), (name, dep)
            else:
                assert cond == "service_completed_successfully", (name, dep, cond)
                assert svc[dep].get("restart") == "no", f"{dep} must be one-shot"
    needs_db = {"redis", "postgres", "migrate"}
    for name in ("gateway", "worker", "summarizer", "beat"):
        assert set(svc[name]["depends_on"]) == needs_db, name
        assert svc[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert svc["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert svc["flower"]["depends_on"] == {"redis": {"condition": "service_healthy"}}


def test_secrets_are_required_variables_never_defaults_or_literals() -> None:
    raw = (ROOT / "docker-compose.yml").read_text()
    for name in REQUIRED_SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", raw)
        assert uses, f"{name} is not used"
        assert all(u.startswith(":?") and len(u) > 2 for u in uses), (name, uses)
    for value in _strings(compose()):
        assert not re.search(r"\$(?![{$])", value), f"bare $VAR in {value!r}: write ${{VAR}}"
    for name, s in services().items():
        for key, value in (s.get("environment") or {}).items():
            if SECRETISH.search(key):
                ok = value is None or re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value))
                assert ok, f"{name}.{key}: a secret must be ${{VAR:?message}} or passed through"
    # Leaving a required secret unset (or empty) stops `docker compose up` with its message.
    assert container_env(services()["flower"], FAKE_HOST_ENV)
    with pytest.raises(MissingVariable, match="FLOWER_BASIC_AUTH: set user:password"):
        container_env(services()["flower"], {"POSTGRES_PASSWORD": "x", "FLOWER_BASIC_AUTH": ""})
    for role in TURNQ_ROLES:
        with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
            container_env(services()[role], {"FLOWER_BASIC_AUTH": "a:b"})


def test_every_turnq_variable_in_compose_is_a_setting() -> None:
    known = settings_env_names()
    raw = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\bTURNQ_[A-Z0-9_]+", raw))
    assert used and used <= known, sorted(used - known)
    for s in turnq_services().values():
        for key in s.get("environment") or {}:
            assert key in known or not key.startswith(("TURNQ_", "OPENAI_")), key


@pytest.mark.parametrize("role", sorted(TURNQ_ROLES))
def test_each_roles_compose_environment_is_a_valid_settings(
    role: str, clean_env: pytest.MonkeyPatch
) -> None:
    env = container_env(services()[role], FAKE_HOST_ENV)
    for key, value in env.items():
        clean_env.setenv(key, value)
    s = Settings()
    assert s.env == "prod" and s.redis_url == "redis://redis:6379/0"
    assert s.database_url == "postgresql+psycopg://turnq:pw123@postgres:5432/turnq"
    assert s.metrics_port == 9100
    if role == "gateway":
        assert (s.gateway_host, s.gateway_port) == ("0.0.0.0", 8000)
    if role == "flower":
        assert s.flower_basic_auth == FAKE_HOST_ENV["FLOWER_BASIC_AUTH"]
        assert (s.flower_address, s.flower_port) == ("0.0.0.0", 5555)


def test_healthchecks_of_turnq_roles() -> None:
    svc = services()
    for role in ("worker", "summarizer", "beat"):
        assert svc[role]["healthcheck"]["test"] == ["CMD", "turnq", "health", "--role", role]
        assert role in ROLES
    assert svc["migrate"]["healthcheck"] == {"disable": True}
    gateway = " ".join(svc["gateway"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/healthz" in gateway
    assert "http://127.0.0.1:5555/healthcheck" in " ".join(svc["flower"]["healthcheck"]["test"])
    for name in TURNQ_ROLES - {"migrate"}:
        check = svc[name]["healthcheck"]
        assert duration_s(check["timeout"]) < duration_s(check["interval"]), name


def test_scaling_and_singletons() -> None:
    svc = services()
    for name, s in svc.items():
        assert "container_name" not in s, f"{name}: a fixed name breaks --scale"
    for name in ("worker", "summarizer"):
        assert "ports" not in svc[name], f"{name}: host ports break --scale"
        assert svc[name].get("deploy", {}).get("replicas", 1) >= 1
    assert svc["beat"]["deploy"]["replicas"] == 1
    assert svc["gateway"]["ports"] == ["${GATEWAY_PORT:-8000}:8000"]
    for name in ("flower", "prometheus", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in svc[name]["ports"]), name
    assert "ports" not in svc["redis"] and "ports" not in svc["postgres"]
    assert svc["prometheus"]["profiles"] == svc["grafana"]["profiles"] == ["monitoring"]


def test_grace_periods_cover_celery_shutdown() -> None:
    soft = soft_shutdown_s()
    svc = services()
    for name in ("worker", "summarizer"):
        assert duration_s(svc[name]["stop_grace_period"]) > soft, name
    k8s_worker = deployment("worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert k8s_worker == duration_s(svc["worker"]["stop_grace_period"])
    for role in ("worker", "summarizer"):
        spec = deployment(role)["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] > soft, role
        assert "lifecycle" not in main_container(deployment(role)), (
            "a preStop would only delay the SIGTERM that starts Celery's warm shutdown"
        )


# --------------------------------------------------------------------------- Dockerfile
def test_dockerfile_one_slim_non_root_image_for_every_role() -> None:
    instrs = dockerfile()
    args = dict(a.split("=", 1) for i, a in instrs if i == "ARG" and "=" in a)
    froms = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], a).split()[0] for i, a in instrs if i == "FROM"
    ]
    assert froms and all(f == "python:3.11-slim" for f in froms), froms
    last = dict(instrs)  # the last of each instruction wins, as in Docker
    user = last["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "run as a numeric non-root uid (k8s runAsNonRoot)"
    assert last["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(last["ENTRYPOINT"]) == ["tini", "--", "turnq"]
    assert "turnq health --role" in last["HEALTHCHECK"]
    env = " ".join(a for i, a in instrs if i == "ENV")
    assert "OPENAI_AGENTS_DISABLE_TRACING=1" in env
    for name in re.findall(r"\b(TURNQ_[A-Z0-9_]+)=", env):
        assert name in settings_env_names(), name
    runs = " ".join(a for i, a in instrs if i == "RUN")
    assert "pip install ." in runs and "tini" in runs
    # Every package pyproject installs is copied into the build.
    copied = {src for i, a in instrs if i == "COPY" and "--from" not in a for src in a.split()[:-1]}
    packages = {"shared", "producer", "workers", "ops"}
    assert packages | {"pyproject.toml", "README.md"} <= copied
    pyproject = (ROOT / "pyproject.toml").read_text()
    includes = re.search(r"include = \[(.*?)\]", pyproject)
    assert includes and {p.strip('" *') for p in includes[1].split(",")} == packages
    assert 'turnq = "producer.cli:main"' in pyproject  # the entry point the image runs
    uid = int(user)
    for role in ("gateway", "worker", "summarizer", "beat", "flower"):
        assert deployment(role)["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest() -> None:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch(p, pat.rstrip("/")) for p in prefixes for pat in patterns)

    needed = [
        "pyproject.toml", "README.md", "shared/settings.py", "shared/lua", "producer/cli.py",
        "workers/app.py", "ops/migrate.py", "ops/migrations/env.py", "ops/processes.py",
    ]  # fmt: skip
    for path in needed:
        assert (ROOT / path).exists() and not ignored(path), path
    for path in (".git", ".venv", ".env", ".turnq", "tests/unit", "docs/operations.md"):
        assert ignored(path), path


# --------------------------------------------------------------------------- Kubernetes
def test_k8s_documents_parse_with_the_expected_kinds() -> None:
    docs = k8s_docs()
    kinds = {d["kind"] for d in docs}
    assert kinds <= {
        "Namespace", "ConfigMap", "Job", "Deployment", "Service", "PodDisruptionBudget",
        "ScaledObject", "TriggerAuthentication",
    }, kinds  # fmt: skip
    assert {d["metadata"]["name"] for d in k8s("Deployment")} == {
        f"turnq-{r}" for r in ("gateway", "worker", "summarizer", "beat", "flower")
    }
    assert [d["metadata"]["name"] for d in k8s("Job")] == ["turnq-migrate"]
    assert {d["metadata"]["name"] for d in k8s("Service")} == {"turnq-gateway", "turnq-flower"}
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "turnq", d["metadata"]["name"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def _workloads() -> list[dict[str, Any]]:
    return k8s("Deployment") + k8s("Job")


def test_k8s_environment_names_are_settings_and_build_valid_settings(
    clean_env: pytest.MonkeyPatch,
) -> None:
    known = settings_env_names()
    assert set(configmap()) <= known, sorted(set(configmap()) - known)
    for w in _workloads():
        c = main_container(w)
        assert c["envFrom"] == [{"configMapRef": {"name": "turnq-config"}}]
        for var in c.get("env", []):
            ref = var["valueFrom"]["secretKeyRef"]
            assert var["name"] in known and ref["name"] == "turnq-secrets", var
            assert ref["key"] == var["name"]
    for key, value in configmap().items():
        clean_env.setenv(key, value)
    clean_env.setenv("TURNQ_FLOWER_BASIC_AUTH", "admin:x")
    s = Settings()
    assert s.env == "prod" and s.gateway_host == "0.0.0.0" and s.flower_address == "0.0.0.0"
    assert str(s.run_dir).startswith("/tmp/") and str(s.data_dir) == "/var/lib/turnq"


def test_k8s_commands_match_compose() -> None:
    svc = services()
    for role in ("gateway", "worker", "summarizer", "beat", "flower"):
        assert main_container(deployment(role))["args"] == svc[role]["command"], role
    assert main_container(k8s("Job")[0])["args"] == svc["migrate"]["command"]


def test_k8s_probes_and_graceful_shutdown() -> None:
    for role in ("worker", "summarizer", "beat"):
        c = main_container(deployment(role))
        for probe, kind in (("livenessProbe", "liveness"), ("readinessProbe", "readiness")):
            cmd = c[probe]["exec"]["command"]
            assert cmd == ["turnq", "health", "--role", role, "--probe", kind], (role, cmd)
            assert c[probe]["timeoutSeconds"] < c[probe]["periodSeconds"]
        assert c["startupProbe"]["exec"]["command"][:4] == ["turnq", "health", "--role", role]
    gateway = main_container(deployment("gateway"))
    port = int(configmap()["TURNQ_GATEWAY_PORT"])
    assert gateway["ports"] == [{"name": "http", "containerPort": port}]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "tcpSocket" in gateway["livenessProbe"], "a Postgres outage must not restart gateways"
    assert gateway["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    flower = main_container(deployment("flower"))
    assert flower["readinessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert flower["livenessProbe"]["httpGet"]["path"] == "/healthcheck"
    for role in ("gateway", "flower"):
        spec = deployment(role)["spec"]["template"]["spec"]
        pre_stop = int(
            main_container(deployment(role))["lifecycle"]["preStop"]["exec"]["command"][1]
        )
        assert spec["terminationGracePeriodSeconds"] > pre_stop + 5, role


def test_k8s_beat_is_a_singleton_and_workers_are_autoscaled() -> None:
    beat = deployment("beat")["spec"]
    assert beat["replicas"] == 1 and beat["strategy"] == {"type": "Recreate"}
    assert "replicas" not in deployment("worker")["spec"], "KEDA owns the worker's replicas"
    (scaled,) = k8s("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "turnq-worker"
    assert scaled["spec"]["minReplicaCount"] >= 1, "workers also run the maintenance jobs"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == queue(TURNS_QUEUE, configmap()["TURNQ_NAMESPACE"])
    assert int(trigger["metadata"]["listLength"]) > 0
    (auth,) = k8s("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"address", "password"}
    assert "--queues" in main_container(deployment("worker"))["args"]
    assert "maintenance" in main_container(deployment("worker"))["args"][2].split(",")


def hpa_alternative() -> dict[str, Any]:
    """The HorizontalPodAutoscaler worker.yaml offers, commented out, for clusters without KEDA."""
    text = (K8S / "worker.yaml").read_text()
    block = text.split("(without KEDA; begin)")[1].split("--- HPA alternative (end)")[0]
    lines = [ln[2:] for ln in block.splitlines() if ln.startswith("# ")]
    hpa: dict[str, Any] = yaml.safe_load(
        "\n".join(
            ln for ln in lines if ln.startswith((" ", "apiVersion", "kind", "metadata", "spec"))
        )
    )
    return hpa


def test_k8s_hpa_alternative_in_comments_is_valid() -> None:
    hpa = hpa_alternative()
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "turnq-worker"
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]
    assert metric["name"] in AGREED_METRICS
    assert metric["selector"]["matchLabels"] == {"queue": TURNS_QUEUE}


# Kinds the Kubernetes API schemas do not cover: KEDA's CRDs, checked structurally above.
CRD_KINDS = {"keda.sh/v1alpha1/ScaledObject", "keda.sh/v1alpha1/TriggerAuthentication"}


def schema_problems(docs: list[dict[str, Any]]) -> tuple[list[str], set[str]]:
    """Strict validation (no unknown fields) against the oldest and the newest Kubernetes
    release kubernetes-validate ships schemas for: (problems, kinds it has no schema for).

    What kubeconform does, offline: the schemas are in the package (a dev extra).
    """
    try:
        import kubernetes_validate as kv
        from kubernetes_validate.utils import all_versions
    except ImportError:
        missing("kubernetes-validate is not installed: pip install -e '.[dev]' (make setup)")
    problems, unknown = [], set()
    for version in sorted({all_versions()[0], all_versions()[-1]}):
        for d in docs:
            where = f"{d['kind']}/{d['metadata']['name']} on {version}"
            try:
                kv.validate(d, version, strict=True)
            except kv.SchemaNotFoundError:
                unknown.add(f"{d['apiVersion']}/{d['kind']}")
            except kv.ValidationError as exc:
                problems.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
    return problems, unknown


def test_k8s_objects_match_the_kubernetes_schemas() -> None:
    problems, unknown = schema_problems([*k8s_docs(), hpa_alternative()])
    assert not problems, problems
    assert unknown == CRD_KINDS  # a typo in an apiVersion or kind would land here


def test_k8s_selectors_services_and_security() -> None:
    deployments = k8s("Deployment")
    for d in deployments:
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for svc in k8s("Service"):
        selector = svc["spec"]["selector"].items()
        (target,) = [
            d
            for d in deployments
            if selector <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        ports = {p["name"] for p in main_container(target).get("ports", [])}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
    data_dir, run_dir = configmap()["TURNQ_DATA_DIR"], configmap()["TURNQ_RUN_DIR"]
    for w in _workloads():
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        c = main_container(w)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {data_dir, "/tmp"} <= mounts and run_dir.startswith("/tmp/")


# ---------------------------------------------------------------- Prometheus and Grafana
def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_prometheus_scrapes_every_role_on_its_port() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"turnq-gateway", "turnq-worker", "turnq-summarizer", "turnq-flower"}
    metrics_port = int(services()["worker"]["environment"]["TURNQ_METRICS_PORT"])
    for role in ("worker", "summarizer"):
        (sd,) = jobs[f"turnq-{role}"]["dns_sd_configs"]
        assert sd["names"] == [role] and sd["port"] == metrics_port
    assert jobs["turnq-gateway"]["static_configs"][0]["targets"] == ["gateway:8000"]
    assert jobs["turnq-flower"]["static_configs"][0]["targets"] == ["flower:5555"]
    k8s_scrape = yaml.safe_load((PROM / "scrape-k8s.yml").read_text())["scrape_configs"][0]
    assert any(r.get("replacement") == "turnq-$1" for r in k8s_scrape["relabel_configs"])
    for role in ("worker", "summarizer", "gateway", "flower"):
        notes = deployment(role)["spec"]["template"]["metadata"]["annotations"]
        ports = {p["containerPort"] for p in main_container(deployment(role))["ports"]}
        assert notes["prometheus.io/scrape"] == "true" and int(notes["prometheus.io/port"]) in ports


def test_alert_rules_cover_the_four_incidents() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    for r in rules:
        assert r["expr"] and "for" in r and r["annotations"]["summary"], r["alert"]
        assert "{{" not in r["annotations"]["description"], "only summaries are templated"
        assert r["labels"]["severity"] in {"info", "warning", "critical"}, r["alert"]
    assert {
        "TurnqTurnBacklogGrowing", "TurnqOldestQueuedTurnOld",          # backlog
        "TurnqTurnsNearTimeout", "TurnqReaperRecoveriesRising",         # stuck turns
        "TurnqCompactionLag", "TurnqCompactionsFailing",                # compaction lag
        "TurnqTurnFailureRatioHigh",                                    # failure ratio
    } <= names  # fmt: skip


def _metric_problems(expr: str) -> list[str]:
    problems = []
    for m in re.finditer(r"\b((?:turnq|flower)_[a-z0-9_]+|up)\b(\{[^}]*\})?", expr):
        name, selector = m[1], m[2] or ""
        base, extra = name, set()
        if name not in KNOWN_METRICS:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if KNOWN_METRICS.get(base, ("",))[0] != "histogram":
                problems.append(f"unknown metric {name}")
                continue
            extra = {"le"} if name.endswith("_bucket") else set()
        labels = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector))
        allowed = set(KNOWN_METRICS[base][1]) | extra | TARGET_LABELS
        if labels - allowed:
            problems.append(f"{name}: no label(s) {sorted(labels - allowed)}")
    return problems


def test_alerts_and_dashboard_use_only_known_metrics_and_labels() -> None:
    exprs = [r["expr"] for r in alert_rules()] + dashboard_exprs()
    problems = [p for e in exprs for p in _metric_problems(e)]
    assert not problems, problems
    names = {m for e in dashboard_exprs() for m in re.findall(r"\bturnq_[a-z0-9_]+", e)}
    shown = names | {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
    assert set(AGREED_METRICS) <= shown, f"not on the dashboard: {set(AGREED_METRICS) - shown}"


def test_agreed_metrics_are_exported_by_the_code() -> None:
    """Every agreed metric, with its agreed type: alerts on a missing one would never fire."""
    from prometheus_client import REGISTRY

    import producer.gateway.metrics  # noqa: F401  (registers the gateway's metrics)
    import shared.metrics

    families = [*REGISTRY.collect(), *shared.metrics.ClusterCollector._families(None)]
    exported = {f.name: f.type for f in families}  # a counter's family drops "_total"
    assert set(CLUSTER_EXTRAS) <= exported.keys()
    wrong = {
        name: exported.get(name.removesuffix("_total"), "not exported")
        for name, (kind, _) in AGREED_METRICS.items()
        if exported.get(name.removesuffix("_total")) != kind
    }
    assert not wrong, f"agreed metrics not exported as agreed: {wrong}"


def test_dashboard_shows_human_approvals() -> None:
    """Waiting turns, how long people take to decide, and what expired (issue 13); the
    status and decision values it filters on are ones turnq writes."""
    from shared.status import TurnStatus

    dash = json.loads(DASHBOARD.read_text())
    by_title = {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dash["panels"]}
    assert by_title["Turns waiting for a person"] == [
        'max(turnq_turns_by_status{status="waiting"})'
    ]
    assert all("turnq_approval_decision_seconds_bucket" in e for e in by_title[
        "Approval decision time"
    ])  # fmt: skip
    assert any('decision="expired"' in e for e in by_title["Approvals expired"])
    # Turn statuses (letters; the gateway's HTTP statuses are digits, e.g. "5..").
    statuses = {v for e in dashboard_exprs() for v in re.findall(r'status=~?"([a-z|]+)"', e)}
    for value in statuses:
        assert set(value.split("|")) <= {s.value for s in TurnStatus}, value
    decisions = {"approved", "rejected", "expired", "cancelled"}  # approvals.decision
    for e in dashboard_exprs():
        for value in re.findall(r'decision="([a-z]+)"', e):
            assert value in decisions, value


def test_dashboard_is_a_grafana_dashboard() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    (var,) = dash["templating"]["list"]
    assert (var["name"], var["type"], var["query"]) == ("datasource", "datasource", "prometheus")
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(graphs) >= 20
    for p in graphs:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and p["title"], p["id"]
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"] and t["refId"] and t["datasource"]["uid"] == "${datasource}"
    provider = yaml.safe_load((ROOT / "ops/grafana/provisioning/dashboards/turnq.yml").read_text())
    mounts = services()["grafana"]["volumes"]
    assert any(
        m.endswith(provider["providers"][0]["options"]["path"] + "/turnq-dashboard.json:ro")
        for m in mounts
    )


# ------------------------------------------------- promtool (fails under CI when missing)
def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool") or missing(
        "promtool is not installed (Debian: apt-get install prometheus; "
        "ops/scripts/ensure-services.sh installs it)"
    )
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_accepts_the_config_the_rules_and_every_dashboard_query(tmp_path: Path) -> None:
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROM / name, tmp_path / name)
    out = _promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    queries = [e.replace("$__rate_interval", "5m") for e in dashboard_exprs()]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)
    ]}]}  # fmt: skip
    (tmp_path / "dashboard.rules.yml").write_text(yaml.safe_dump(rules))
    out = _promtool("check", "rules", "dashboard.rules.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_an_incident_test_and_a_healthy_system_fires_none() -> None:
    spec = yaml.safe_load((PROM / "alerts.test.yml").read_text())
    assert spec["rule_files"] == ["alerts.yml"]
    fired, quiet = set(), set()
    for group in spec["tests"]:
        for case in group["alert_rule_test"]:
            if case["exp_alerts"]:
                assert group["name"] != "healthy", case["alertname"]
                fired.add(case["alertname"])
            elif group["name"] == "healthy":
                quiet.add(case["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert fired == names, f"alerts without an incident: {names - fired}"
    assert len(quiet) >= 8, "the healthy system must be shown not to fire the main alerts"


def test_promtool_runs_the_incident_tests() -> None:
    out = _promtool("test", "rules", "alerts.test.yml", cwd=PROM)
    assert out.returncode == 0, out.stdout + out.stderr
