"""The embedded dev stack: what `turnq dev` relies on when no URLs are configured.

Each test gets its own data dir, so these never touch the shared servers on :6379/:5432.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from ops.devstack import EmbeddedStack, StackAlreadyRunning, StackError, ensure_stack
from shared.settings import STACK_FILE, Settings
from tests.support.servers import PrivateRedis, wait_until

pytestmark = [pytest.mark.service, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]


def _settings(data_dir: Path, **urls: str | None) -> Settings:
    """Explicit arguments beat whatever TURNQ_* the environment of this run holds."""
    return Settings(data_dir=data_dir, redis_url=urls.get("redis"), database_url=urls.get("db"))


def _sqlalchemy(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    with EmbeddedStack(tmp_path_factory.mktemp("devstack")) as s:
        yield s


def test_redis_answers_ping(stack: EmbeddedStack) -> None:
    assert stack.redis_url.startswith("redis://127.0.0.1:")
    with contextlib.closing(redis.Redis.from_url(stack.redis_url)) as client:
        assert client.ping()
        assert client.config_get("save")["save"] == ""  # no persistence


def test_psycopg_reaches_the_turnq_database(stack: EmbeddedStack) -> None:
    with psycopg.connect(stack.database_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        row = conn.execute("SELECT current_database(), inet_server_addr()::text").fetchone()
        assert row == ("turnq", "127.0.0.1/32")  # TCP, so subprocesses anywhere can use it


def test_sqlalchemy_sync_and_async(stack: EmbeddedStack) -> None:
    query = sa.text("SELECT current_database()")
    engine = sa.create_engine(_sqlalchemy(stack.database_url))
    with engine.connect() as conn:
        assert conn.scalar(query) == "turnq"
    engine.dispose()

    async def check() -> str | None:
        aengine = create_async_engine(_sqlalchemy(stack.database_url))
        try:
            async with aengine.connect() as conn:
                value: str | None = await conn.scalar(query)
                return value
        finally:
            await aengine.dispose()

    assert asyncio.run(check()) == "turnq"


def test_unix_socket_url_works_for_psycopg_and_sqlalchemy(stack: EmbeddedStack) -> None:
    url = stack.database_socket_url
    assert "?host=/" in url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database(), inet_server_addr()").fetchone() == (
            "turnq",
            None,  # no server address: it went over the socket
        )
    engine = sa.create_engine(_sqlalchemy(url))
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT 1")) == 1
    engine.dispose()


def test_settings_find_the_stack_through_stack_json(stack: EmbeddedStack) -> None:
    data = json.loads((stack.data_dir / STACK_FILE).read_text())
    assert data["redis_url"] == stack.redis_url
    assert data["database_url"] == stack.database_url
    s = _settings(stack.data_dir)
    assert s.redis_url == stack.redis_url
    assert s.libpq_database_url == stack.database_url


def test_stop_removes_stack_json_and_data_survives_a_restart(tmp_path: Path) -> None:
    stack = EmbeddedStack(tmp_path)
    stack.start()
    try:
        assert (tmp_path / STACK_FILE).exists()
        with psycopg.connect(stack.database_url) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('still here')")
        old_url = stack.database_url
    finally:
        stack.stop()
    assert not (tmp_path / STACK_FILE).exists()
    assert not stack.running
    with pytest.raises(StackError, match="not running"):
        _ = stack.redis_url
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(old_url, connect_timeout=2).close()

    with EmbeddedStack(tmp_path) as again:  # warm start: the cluster is reused
        with psycopg.connect(again.database_url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("still here",)]


def test_a_second_stack_on_the_same_dir_fails_clearly(tmp_path: Path) -> None:
    with EmbeddedStack(tmp_path) as first:
        before = (tmp_path / STACK_FILE).read_text()
        with pytest.raises(StackAlreadyRunning, match=r"already running in .* \(pid \d+\)"):
            EmbeddedStack(tmp_path).start()
        # the failed attempt touched nothing
        assert (tmp_path / STACK_FILE).read_text() == before
        with contextlib.closing(redis.Redis.from_url(first.redis_url)) as client:
            assert client.ping()
        with psycopg.connect(first.database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_stack_json_is_ignored_and_replaced(tmp_path: Path) -> None:
    stale = {
        "redis_url": "redis://127.0.0.1:1/0",
        "database_url": "postgresql://postgres@127.0.0.1:1/turnq",
        "pid": _dead_pid(),
    }
    (tmp_path / STACK_FILE).write_text(json.dumps(stale))
    settings = _settings(tmp_path)
    assert settings.redis_url is None  # a dead owner's URLs are not offered

    stack, redis_url, database_url = ensure_stack(settings)
    assert stack is not None
    try:
        assert redis_url == stack.redis_url != stale["redis_url"]
        assert database_url == stack.database_url
        written = json.loads((tmp_path / STACK_FILE).read_text())
        assert written["pid"] != stale["pid"]
        assert written["redis_url"] == stack.redis_url
    finally:
        stack.stop()


def test_ensure_stack_starts_nothing_when_both_urls_are_set(tmp_path: Path) -> None:
    settings = _settings(tmp_path, redis="redis://127.0.0.1:9/0", db="postgresql://u@127.0.0.1:9/x")
    stack, redis_url, database_url = ensure_stack(settings)
    assert stack is None
    assert redis_url == "redis://127.0.0.1:9/0"
    assert database_url == "postgresql+psycopg://u@127.0.0.1:9/x"
    assert not (tmp_path / "pg").exists()


def test_servers_orphaned_by_a_killed_owner_are_replaced(tmp_path: Path) -> None:
    """`turnq dev` SIGKILLed leaves servers and stack.json behind; the next start recovers."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from ops.devstack import EmbeddedStack
        EmbeddedStack({str(tmp_path)!r}).start()
        print("up", flush=True)
        time.sleep(600)
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "up"
        orphans = [
            _pid_in(tmp_path / "redis" / "redis.pid"),
            _pid_in(tmp_path / "pg" / "postmaster.pid"),
        ]
        with pytest.raises(StackAlreadyRunning):
            EmbeddedStack(tmp_path).start()
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()

    with EmbeddedStack(tmp_path) as stack:
        # the orphans were stopped, not left running beside the new servers
        wait_until(lambda: all(map(_gone, orphans)), timeout=5, message="orphans still run")
        with contextlib.closing(redis.Redis.from_url(stack.redis_url)) as client:
            assert client.ping()
        with psycopg.connect(stack.database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def _pid_in(path: Path) -> int:
    return int(path.read_text().split()[0])


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def test_a_stale_pid_file_never_kills_someone_elses_server(tmp_path: Path) -> None:
    """After a crash the recorded pid may belong to another redis-server (say the shared one)."""
    with PrivateRedis() as bystander:
        assert bystander.proc is not None
        (tmp_path / "redis").mkdir()
        (tmp_path / "redis" / "redis.pid").write_text(f"{bystander.proc.pid}\n")
        with EmbeddedStack(tmp_path):
            pass
        assert bystander.running
        with contextlib.closing(bystander.client()) as client:
            assert client.ping()
