"""The three role stores on one database, for service tests.

async with stores_on(database_url) as s:
    turn, _, _ = await s.producer.enqueue("alice", "s1", "hi", None)
    claim = await s.worker.claim(turn.session_id, None, 3)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from shared.store import (
    Context,
    Database,
    MaintenanceStore,
    ProducerStore,
    SessionRecord,
    WorkerStore,
    create_engine,
    session_of,
)


@dataclass
class Stores:
    db: Database
    producer: ProducerStore
    worker: WorkerStore
    maintenance: MaintenanceStore

    @classmethod
    def of(cls, db: Database) -> Stores:
        return cls(db, ProducerStore(db), WorkerStore(db), MaintenanceStore(db))

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.db.engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()

    async def session(self, session_id: str) -> SessionRecord:
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT * FROM sessions WHERE id = :id"), {"id": session_id}
                )
            ).one()
        return session_of(row)

    async def context(self, session_id: str) -> Context:
        """What the session's next turn would see (its summary and the items after the mark)."""
        record = await self.session(session_id)
        items = [
            i for p, _, i in await self.producer.history(session_id) if p >= record.compaction_mark
        ]
        return Context(record.summary, items, record.compaction_mark, record.summary_items)

    async def add_turn(self, user: str, key: str, items: list[Any], output: str = "ok") -> str:
        """Enqueue, claim and complete one turn with these items; returns its session id."""
        turn, _, _ = await self.producer.enqueue(user, key, "turn", None)
        claim = await self.worker.claim(turn.session_id, None, 5)
        assert claim is not None and claim.turn is not None and claim.turn.id == turn.id
        await self.worker.complete(claim.turn, claim.fence, items, output, None, None, None)
        return turn.session_id

    async def execute(self, sql: str, **params: Any) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(text(sql), params)


def sqlalchemy_url(database_url: str) -> str:
    return database_url.replace("postgresql://", "postgresql+psycopg://", 1)


@asynccontextmanager
async def stores_on(database_url: str, namespace: str = "") -> AsyncIterator[Stores]:
    db = Database(create_engine(sqlalchemy_url(database_url)), namespace=namespace)
    try:
        yield Stores.of(db)
    finally:
        await db.close()
