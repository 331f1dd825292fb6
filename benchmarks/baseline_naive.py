"""Baseline: the naive design, the whole history as one JSON row rewritten every turn.

    naive = NaiveStore(engine)            # the same SQLAlchemy/psycopg engine type as Store
    await naive.create()
    sid = await naive.seed(items)         # a session holding ``items``
    history = await naive.load(sid)       # a turn reads the whole history...
    await naive.save(sid, history + new)  # ...and writes it all back (one UPDATE, committed)

What many first designs do (and what a key-value "session" amounts to): simple, but a
turn's write grows with the history, since Postgres rewrites (and re-TOASTs) the
whole JSON value on every UPDATE.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

DDL = """
CREATE TABLE IF NOT EXISTS naive_sessions (
    id uuid PRIMARY KEY,
    history jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""


class NaiveStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(text(DDL))

    async def seed(self, history: list[dict[str, Any]]) -> str:
        sid = str(uuid.uuid4())
        async with self.engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO naive_sessions (id, history) VALUES (:id, CAST(:h AS jsonb))"),
                {"id": sid, "h": json.dumps(history, ensure_ascii=False)},
            )
        return sid

    async def load(self, sid: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT history FROM naive_sessions WHERE id = :id"), {"id": sid}
                )
            ).one()
        return list(row[0])

    async def save(self, sid: str, history: list[dict[str, Any]]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE naive_sessions SET history = CAST(:h AS jsonb), updated_at = now() "
                    "WHERE id = :id"
                ),
                {"id": sid, "h": json.dumps(history, ensure_ascii=False)},
            )
