"""Contract of ``shared.pgpool.FastPool`` on real Postgres servers."""

from __future__ import annotations

import asyncio
import os

import psycopg
import pytest

from shared.pgpool import FastPool, PoolTimeout
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
    from shared.store import Store

    store = Store.connect(database_url.replace("postgresql://", "postgresql+psycopg://", 1), 10)
    try:
        assert store.engine.pool.size() == 5  # type: ignore[attr-defined]
        assert store._fast.max_size == 10
        turn, _, _ = await store.enqueue("u", "budget", "hi", None)
        assert (await store.get_turn(turn.id)) == turn
    finally:
        await store.close()
