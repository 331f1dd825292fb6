"""Shared plumbing for benchmarks: a scratch database, worker processes, percentiles, tables."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime

import psycopg

from ops.migrate import upgrade
from ops.processes import WORKER_READY, ManagedProcess, worker_command

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
RAW_READY = "bench: raw worker ready"  # printed by benchmarks.raw_celery at any log level
TERMINAL = ("succeeded", "failed", "cancelled")


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
        import redis

        r = redis.Redis.from_url(REDIS)
        try:  # the run's queues, locks and event streams
            for key in r.scan_iter(match=f"{env['TURNQ_NAMESPACE']}*", count=1000):
                r.delete(key)
        finally:
            r.close()


def turnq_worker(env: dict[str, str], name: str, concurrency: int, **extra: str) -> ManagedProcess:
    ns = extra.get("TURNQ_NAMESPACE", env["TURNQ_NAMESPACE"])
    cmd = worker_command(
        name=name, queues=[ns + "turns", ns + "maintenance"], concurrency=concurrency,
        loglevel="WARNING",
    )  # fmt: skip
    return ManagedProcess(cmd, {**env, **extra}, name, ready=WORKER_READY)


def raw_worker(
    env: dict[str, str], queue: str, concurrency: int, pool: str = "threads", name: str = "raw"
) -> ManagedProcess:
    """The baseline worker; logs at WARNING like turnq's, so neither pays per-task logging."""
    cmd = [
        sys.executable, "-m", "celery", "-A", "benchmarks.raw_celery", "worker", "-P", pool,
        "-c", str(concurrency), "-Q", queue, "-n", f"{name}-{queue}@%h", "-l", "WARNING",
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    return ManagedProcess(cmd, {**env, "BENCH_RAW_QUEUE": queue}, name, ready=RAW_READY)


def pg_url(env: dict[str, str]) -> str:
    """The scratch database as a plain psycopg URL."""
    return env["TURNQ_DATABASE_URL"].replace("+psycopg", "")


@contextmanager
def running(procs: Sequence[ManagedProcess]) -> Iterator[list[ManagedProcess]]:
    """Start every process (all at once); stop them all on the way out, even if one failed."""
    with ExitStack() as stack:
        for proc in procs:
            stack.callback(proc.stop)
        with ThreadPoolExecutor(max(1, len(procs))) as pool:
            list(pool.map(lambda p: p.start(), procs))
        yield list(procs)


def enqueue_many(
    keys: Sequence[str], user: str = "bench", parallel: int = 16, namespace: str | None = None
) -> list[str]:
    """Enqueue one turn per key (keys may repeat: turns of one session), in this order
    per session, kicking the workers of ``namespace`` (default: the environment's);
    returns the turn ids."""
    from producer import AsyncClient
    from shared.settings import Settings

    async def go() -> list[str]:
        by_session: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            by_session.setdefault(k, []).append(i)
        ids = [""] * len(keys)
        gate = asyncio.Semaphore(parallel)
        settings = Settings(namespace=namespace) if namespace else Settings()
        async with AsyncClient.from_settings(settings) as client:

            async def one_session(k: str, idx: list[int]) -> None:
                async with gate:
                    for i in idx:  # a session's turns in order: FIFO is per session
                        ids[i] = (await client.enqueue(k, user, f"hello {i}")).id

            await asyncio.gather(*(one_session(k, v) for k, v in by_session.items()))
        return ids

    return asyncio.run(go())


def wait_turns(env: dict[str, str], ids: Sequence[str], timeout: float = 300) -> dict[str, float]:
    """Wait until every turn is terminal; returns counts and the last finished_at (epoch s)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(pg_url(env), autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = ANY(%s)), "
                "count(*) FILTER (WHERE status = 'succeeded'), max(finished_at), "
                "min(started_at) FROM turns WHERE id = ANY(%s::uuid[])",
                (list(TERMINAL), list(ids)),
            ).fetchone()
            assert row is not None
            if row[0] == len(ids):
                return {
                    "done": row[0],
                    "succeeded": row[1],
                    "last_finished": row[2].timestamp(),
                    "first_started": row[3].timestamp(),
                }
            if time.monotonic() > deadline:
                raise TimeoutError(f"{row[0]}/{len(ids)} turns finished in {timeout}s")
            time.sleep(0.05)


def wait_raw_results(result_ids: Sequence[str], timeout: float = 300) -> float:
    """Wait for every raw no-op's stored result; returns the last date_done (epoch s)."""
    import redis

    r = redis.Redis.from_url(REDIS)
    keys = [f"celery-task-meta-{i}" for i in result_ids]
    deadline = time.monotonic() + timeout
    try:
        while True:
            metas = [m for m in r.mget(keys) if m is not None]
            if len(metas) == len(keys):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(metas)}/{len(keys)} raw tasks done in {timeout}s")
            time.sleep(0.05)
        r.delete(*keys)
    finally:
        r.close()
    done = [datetime.fromisoformat(json.loads(m)["date_done"]) for m in metas]
    return max(d if d.tzinfo else d.replace(tzinfo=UTC) for d in done).timestamp()


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


FILLER = "The quarterly report is due on Friday; remember the figures for region {0}. " * 3


def history_item(p: int) -> dict[str, object]:
    """Item ``p`` of a seeded transcript: user and assistant messages in turn."""
    if p % 2 == 0:
        return {"role": "user", "content": FILLER.format(p)}
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Noted.", "annotations": []}],
    }


def seed_sessions(database_url: str, n: int, items: int, prefix: str = "seeded") -> list[str]:
    """n sessions with ``items`` uncompacted items each, inserted directly; their keys
    are f"{prefix}-{k}" (user "bench"); returns their ids."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    rows = [(p, json.dumps(history_item(p)), 60) for p in range(items)]
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        for k, sid in enumerate(ids):
            cur.execute(
                "INSERT INTO sessions (id, user_id, key, turn_count, item_count, context_tokens) "
                "VALUES (%s, 'bench', %s, %s, %s, %s)",
                (sid, f"{prefix}-{k}", items // 2, items, 60 * items),
            )
            cur.executemany(
                "INSERT INTO items (session_id, position, item, tokens) VALUES (%s, %s, %s, %s)",
                [(sid, *r) for r in rows],
            )
    return ids
