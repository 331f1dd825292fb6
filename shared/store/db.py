"""The database handle every store shares: a SQLAlchemy engine and a fast psycopg pool.

    db = Database.connect(settings.require_database_url(), pool_size=10, namespace="")
    row = await db.call("SELECT * FROM turnq_claim(:sid, :fence, :max)", {...})

Most statements go through the SQLAlchemy ``engine``.  The per-turn statements (enqueue,
claim, complete, turn reads) go through a psycopg pool on the same database in
autocommit mode (``shared.pgpool``): SQLAlchemy's checkout and result layers cost
~0.25 ms a call, as much as the statement itself (docs/decisions/0005).
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as SQLAlchemyPoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from shared.errors import Fenced
from shared.pgpool import FastPool, PoolTimeout, closed_by_server
from shared.sql import FENCED_SQLSTATE


def create_engine(
    database_url: str, *, pool_size: int = 10, pool_timeout: float = 30.0
) -> AsyncEngine:
    """A bounded pool: waiting for a connection beats exhausting ``max_connections``.

    Instead of SQLAlchemy's ``pool_pre_ping`` (a round trip on every checkout, ~5 per
    turn), a checked-out connection is tested locally: an idle connection has nothing
    to read, so a readable socket means the server closed it (a restart, an idle
    timeout) and the pool replaces it before anyone uses it.
    """
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=max(1, pool_size // 2),
        pool_timeout=pool_timeout,
        pool_recycle=1800,
    )
    event.listen(engine.sync_engine, "checkout", _discard_if_closed)
    return engine


def _discard_if_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    if closed_by_server(getattr(dbapi_connection, "driver_connection", dbapi_connection)):
        raise DisconnectionError("the server closed the connection")


@functools.cache
def _psycopg_style(sql: str) -> str:
    """``:name`` parameters (SQLAlchemy's text()) as psycopg's ``%(name)s``."""
    return re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", sql)


class Database:
    """The two pools of one database, and the deployment's namespace (TURNQ_NAMESPACE)."""

    def __init__(
        self, engine: AsyncEngine, fast_pool_size: int | None = None, namespace: str = ""
    ) -> None:
        self.engine = engine
        self.namespace = namespace
        size = engine.pool.size() if isinstance(engine.pool, QueuePool) else 5
        timeout = engine.pool.timeout() if isinstance(engine.pool, QueuePool) else 30.0
        self._fast = FastPool(
            engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
            max_size=fast_pool_size or size,
            timeout=timeout,
        )

    @classmethod
    def connect(
        cls, database_url: str, pool_size: int, pool_timeout: float = 30.0, namespace: str = ""
    ) -> Database:
        """Two pools holding about ``pool_size * 1.5`` connections at most.

        The per-turn statements get ``pool_size`` connections (the fast pool); everything
        else (reads of history, compaction, session admin) half as many plus overflow.
        """
        engine = create_engine(
            database_url, pool_size=max(2, pool_size // 2), pool_timeout=pool_timeout
        )
        return cls(engine, fast_pool_size=pool_size, namespace=namespace)

    async def close(self) -> None:
        await self._fast.close()
        await self.engine.dispose()

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose statements commit alone: reads cost one round trip each."""
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    async def call(self, sql: str, params: dict[str, Any]) -> Any:
        """One statement in autocommit mode on the fast pool: its first row, as a dict."""
        rows = await self._run(sql, params, all_rows=False)
        return rows[0] if rows else None

    async def call_all(self, sql: str, params: dict[str, Any]) -> list[Any]:
        """``call``, every row."""
        return await self._run(sql, params, all_rows=True)

    async def _run(self, sql: str, params: dict[str, Any], all_rows: bool) -> list[Any]:
        """A stale fence (SQLSTATE TQ001) is raised as Fenced; other database errors as
        SQLAlchemy's, like every other store call."""
        query = _psycopg_style(sql)
        try:
            async with self._fast.connection() as conn:
                cursor = await conn.execute(query, params)
                if all_rows:
                    return list(await cursor.fetchall())
                row = await cursor.fetchone()
                return [row] if row is not None else []
        except PoolTimeout as exc:
            raise SQLAlchemyPoolTimeout(str(exc)) from exc
        except psycopg.Error as exc:
            if exc.sqlstate == FENCED_SQLSTATE:
                raise Fenced(str(exc).splitlines()[0]) from None
            raise DBAPIError.instance(query, params, exc, psycopg.Error) from exc
