"""Contract of ``shared.pgpool.FastPool`` on real Postgres servers."""

from __future__ import annotations

import asyncio
import os
import resource
import select
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text

from shared.pgpool import FastPool, PoolTimeout
from shared.store import create_engine
from tests.support.servers import PrivatePostgres

pytestmark = [pytest.mark.service, pytest.mark.anyio]


async def _pid(pool: FastPool) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone()
        assert row is not None
        return int(row["pid"])


async def test_reuses_an_idle_connection_in_autocommit(database_url: str) -> None:
    pool = FastPool(database_url, max_size=2, timeout=5)
    try:
        first = await _pid(pool)
        assert await _pid(pool) == first
        async with pool.connection() as conn:
            assert conn.autocommit
    finally:
        await pool.close()


async def test_reuses_a_connection_whose_descriptor_is_above_1024(database_url: str) -> None:
    """A busy worker (a thousand turns in flight) has descriptors beyond select()'s reach."""
    filler = []
    try:
        while not filler or filler[-1] < 1100:
            filler.append(os.open(os.devnull, os.O_RDONLY))
        pool = FastPool(database_url, max_size=1, timeout=5)
        try:
            async with pool.connection() as conn:
                assert conn.pgconn.socket >= 1024
            first = await _pid(pool)
            assert await _pid(pool) == first  # reused, not taken for closed
        finally:
            await pool.close()
    finally:
        for fd in filler:
            os.close(fd)


async def test_waits_for_a_busy_connection_then_times_out(database_url: str) -> None:
    pool = FastPool(database_url, max_size=1, timeout=0.2)
    try:
        async with pool.connection():
            with pytest.raises(PoolTimeout):
                await _pid(pool)
            waiter = asyncio.create_task(_pid(pool))
            await asyncio.sleep(0.05)
            assert not waiter.done()
        assert await waiter > 0  # freed: the waiter got it
    finally:
        await pool.close()


async def test_a_connection_left_in_a_transaction_is_not_reused(database_url: str) -> None:
    pool = FastPool(database_url, max_size=1, timeout=5)
    try:
        async with pool.connection() as conn:
            before = conn.info.backend_pid
            await conn.execute("BEGIN")
        assert await _pid(pool) != before
    finally:
        await pool.close()


async def test_fails_at_once_when_postgres_is_down_and_recovers_after() -> None:
    with PrivatePostgres(database="pool") as pg:
        pool = FastPool(pg.url, max_size=2, timeout=60)
        try:
            old = await _pid(pool)
            pg.stop()
            with pytest.raises(psycopg.OperationalError) as raised:
                await _pid(pool)
            assert not isinstance(raised.value, PoolTimeout)  # refused, not waited out
            pg.start()
            assert await _pid(pool) != old  # the closed connection was replaced
        finally:
            await pool.close()


async def test_a_store_splits_its_connection_budget(database_url: str) -> None:
    from shared.store import Database, ProducerStore

    db = Database.connect(database_url.replace("postgresql://", "postgresql+psycopg://", 1), 10)
    store = ProducerStore(db)
    try:
        assert db.engine.pool.size() == 5  # type: ignore[attr-defined]
        assert db._fast.max_size == 10
        turn, _, _ = await store.enqueue("u", "budget", "hi", None)
        assert (await store.get_turn(turn.id)) == turn
    finally:
        await db.close()


@pytest.fixture
def high_fds() -> Iterator[None]:
    """Hold > 1,100 descriptors, so every socket opened next gets a number >= 1024.

    A busy worker gets there with its Redis and model sockets; ``select.select``
    raises ValueError for such a descriptor.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.extend(os.pipe())  # pipes take the lowest free numbers
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _past_select(fd: int) -> int:
    """The descriptor, after checking it is one ``select`` (the old check) refuses."""
    assert fd >= 1024
    with pytest.raises(ValueError):
        select.select([fd], [], [], 0)
    return fd


async def _kill(database_url: str, pid: int) -> None:
    """End a backend and wait until it is gone (its socket closed), as a restart would."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        row = await (
            await admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        ).fetchone()
        assert row == (True,)


async def test_fast_pool_reuses_connections_on_descriptors_past_1024(
    database_url: str, high_fds: None
) -> None:
    pool = FastPool(database_url, max_size=2, timeout=5)
    try:
        async with pool.connection() as conn:
            _past_select(conn.pgconn.socket)
        first = await _pid(pool)
        assert [await _pid(pool) for _ in range(5)] == [first] * 5  # reused, not reconnected

        await _kill(database_url, first)  # a connection the server closed is still detected
        replaced = await _pid(pool)
        assert replaced != first
        assert await _pid(pool) == replaced
    finally:
        await pool.close()


async def test_engine_reuses_connections_on_descriptors_past_1024(
    database_url: str, high_fds: None
) -> None:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))

    async def pid_and_fd() -> tuple[int, int]:
        async with engine.connect() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            raw = await conn.get_raw_connection()
            return int(pid), raw.driver_connection.pgconn.socket  # type: ignore[union-attr]

    try:
        first, fd = await pid_and_fd()
        _past_select(fd)
        assert [await pid_and_fd() for _ in range(5)] == [(first, fd)] * 5

        await _kill(database_url, first)
        replaced, _ = await pid_and_fd()
        assert replaced != first
        assert (await pid_and_fd())[0] == replaced
    finally:
        await engine.dispose()
