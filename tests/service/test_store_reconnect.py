"""The pool's local liveness check (no pre-ping round trip) on a real Postgres restart.

A pooled connection that the server closed must be replaced at checkout, so the
first statement after a restart succeeds: producers never see one stale connection.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from ops.migrate import upgrade
from shared.store import Database, ProducerStore, create_engine
from tests.support.servers import PrivatePostgres

pytestmark = [pytest.mark.service, pytest.mark.anyio]


async def test_first_statement_after_a_restart_succeeds() -> None:
    with PrivatePostgres(database="reconnect") as pg:
        upgrade(pg.url)
        db = Database(create_engine(pg.url.replace("postgresql://", "postgresql+psycopg://", 1)))
        store = ProducerStore(db)
        try:
            turns = [await store.enqueue("u", f"s{i}", "hi", None) for i in range(3)]
            assert await store.history(turns[0][0].session_id) == []
            assert db.engine.pool.checkedin() >= 1  # pooled, idle, about to go stale

            pg.restart()
            # Both pools: the fast one (enqueue, get_turn) and the engine's (history).
            turn, created, _ = await store.enqueue("u", "s0", "after the restart", None)
            assert created and turn.seq == 2
            assert await store.get_turn(turns[1][0].id) == turns[1][0]
            assert await store.history(turns[0][0].session_id) == []
            async with db.engine.connect() as conn:
                count = (await conn.execute(text("SELECT count(*) FROM turns"))).scalar()
            assert count == 4
        finally:
            await db.close()
