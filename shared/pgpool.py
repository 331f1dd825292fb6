"""A small pool of autocommit psycopg connections for the per-turn statements.

    pool = FastPool("postgresql://...", max_size=10, timeout=30)
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT ...", params)).fetchone()

Why not SQLAlchemy's pool or psycopg_pool (docs/decisions/0005):

* SQLAlchemy's checkout, greenlet bridge and result layer cost ~0.25 ms a call, as
  much as the statement; the turn path makes several calls.
* ``psycopg_pool`` waits up to its timeout for the server to come back when it is
  down; a producer must hear "Postgres is unreachable" at once (a 503), not in 30 s.

So: at most ``max_size`` connections; an idle one is reused LIFO after a local
liveness check (an idle connection has nothing to read: a readable socket means the
server closed it), otherwise a new one is opened, and a failure to connect raises at
once.  Callers wait up to ``timeout`` only when every connection is busy.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import DictRow, dict_row

Connection = psycopg.AsyncConnection[DictRow]


class PoolTimeout(psycopg.OperationalError):
    """Every connection stayed busy for ``timeout`` seconds."""


def closed_by_server(conn: Any) -> bool:
    """True if an idle connection is unusable: closed, broken, or its socket readable."""
    pgconn = getattr(conn, "pgconn", None)
    if pgconn is None:
        return False
    try:
        if conn.closed or pgconn.status != pq.ConnStatus.OK:
            return True
        # poll, not select: select refuses descriptors >= 1024, which a worker with a
        # thousand turns in flight has, and every idle connection looked closed.
        poller = select.poll()
        poller.register(pgconn.socket, select.POLLIN)
        readable = poller.poll(0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


class FastPool:
    def __init__(self, conninfo: str, max_size: int, timeout: float) -> None:
        self.conninfo = conninfo
        self.max_size = max(1, max_size)
        self.timeout = timeout
        self._idle: list[Connection] = []
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        slots = self._semaphore()
        try:
            await asyncio.wait_for(slots.acquire(), self.timeout)
        except TimeoutError:
            raise PoolTimeout(f"no connection free within {self.timeout}s") from None
        try:
            conn = await self._take()
            try:
                yield conn
            finally:
                await self._give_back(conn)
        finally:
            slots.release()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with suppress(psycopg.Error, OSError):
                await conn.close()

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:  # a semaphore is bound to its loop
            self._slots, self._loop = asyncio.Semaphore(self.max_size), loop
        return self._slots

    async def _take(self) -> Connection:
        while self._idle:
            conn = self._idle.pop()
            if not closed_by_server(conn):
                return conn
            with suppress(psycopg.Error, OSError):
                await conn.close()
        return await psycopg.AsyncConnection.connect(
            self.conninfo, autocommit=True, row_factory=dict_row
        )

    async def _give_back(self, conn: Connection) -> None:
        if conn.closed or conn.broken or conn.info.transaction_status != pq.TransactionStatus.IDLE:
            with suppress(psycopg.Error, OSError):
                await conn.close()
            return
        self._idle.append(conn)
