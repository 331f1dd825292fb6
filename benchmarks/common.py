"""Shared plumbing for benchmarks: a scratch database, worker processes, percentiles, tables."""

from __future__ import annotations

import os
import secrets
import statistics
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg

from ops.migrate import upgrade
from ops.processes import WORKER_READY, ManagedProcess, worker_command

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")


@contextmanager
def scratch_stack() -> Iterator[dict[str, str]]:
    """A fresh database and Redis namespace; sets this process's environment."""
    run = secrets.token_hex(4)
    db = f"turnq_bench_{run}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + db
    upgrade(url)
    env = {
        "TURNQ_DATABASE_URL": url,
        "TURNQ_REDIS_URL": REDIS,
        "TURNQ_NAMESPACE": f"b{run}:",
        "TURNQ_MODEL_PROVIDER": "offline",
        "OPENAI_AGENTS_DISABLE_TRACING": "1",
    }
    os.environ.update(env)
    from shared.settings import get_settings

    get_settings.cache_clear()
    try:
        yield env
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def turnq_worker(env: dict[str, str], name: str, concurrency: int, **extra: str) -> ManagedProcess:
    ns = env["TURNQ_NAMESPACE"]
    cmd = worker_command(
        name=name, queues=[ns + "turns", ns + "maintenance"], concurrency=concurrency,
        loglevel="WARNING",
    )  # fmt: skip
    return ManagedProcess(cmd, {**env, **extra}, name, ready=WORKER_READY)


def raw_worker(
    env: dict[str, str], queue: str, concurrency: int, pool: str = "threads"
) -> ManagedProcess:
    cmd = [
        sys.executable, "-m", "celery", "-A", "benchmarks.raw_celery", "worker", "-P", pool,
        "-c", str(concurrency), "-Q", queue, "-n", f"raw-{queue}@%h", "-l", "INFO",
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    return ManagedProcess(cmd, {**env, "BENCH_RAW_QUEUE": queue}, "raw", ready=" ready.")


def pct(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, header)), *[list(map(str, r)) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [title, line]
    for j, r in enumerate(cells):
        out.append("|".join(f" {c:<{widths[i]}} " for i, c in enumerate(r)))
        if j == 0:
            out.append(line)
    out.append(line)
    return "\n".join(out)
