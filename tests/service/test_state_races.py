"""Races between a claim and a cancel, decided where the data is (I12).

A claim used to read the next queued turn without a row lock and then set it running by
id; a cancel that committed in between was overwritten, the turn ran and its items
entered the history although the client was told it was cancelled before it started.
Every transition is now a guarded UPDATE (``status IN (<allowed sources>)``) that
re-checks the row after waiting for its lock and looks again when it lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from shared.status import TurnStatus
from tests.support.stores import Stores, stores_on

pytestmark = [pytest.mark.service, pytest.mark.anyio]


@pytest.fixture
async def s(database_url: str) -> AsyncIterator[Stores]:
    async with stores_on(database_url) as stores:
        yield stores


async def _until_blocked_on_a_lock(database_url: str, pid: int) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for _ in range(400):
            row = await (
                await conn.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]
                )
            ).fetchone()
            if row is not None and row[0] == "Lock":
                return
            await asyncio.sleep(0.025)
    raise AssertionError("the claim never waited for the cancel's row lock")


async def test_a_cancel_committed_between_the_claims_read_and_write_wins(
    s: Stores, database_url: str, uid: str
) -> None:
    turn, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "cancel me", None)
    later, _, _ = await s.producer.enqueue(f"u{uid}", f"s{uid}", "run me", None)
    async with await psycopg.AsyncConnection.connect(database_url) as canceller:
        # The cancel runs and holds its transaction open: the turn row is locked, cancelled.
        await canceller.execute(
            "SELECT * FROM turnq_cancel(%s, %s, %s, 'interrupt')", [turn.id, f"u{uid}", ""]
        )
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as worker:
            pid = worker.info.backend_pid
            claim = asyncio.create_task(
                worker.execute("SELECT turn FROM turnq_claim(%s, NULL, 3)", [turn.session_id])
            )
            # The claim read the turn as queued and now waits for the cancel's row lock.
            await _until_blocked_on_a_lock(database_url, pid)
            await canceller.commit()
            row = await (await claim).fetchone()
    assert row is not None
    claimed = row[0]
    assert claimed is not None and claimed["id"] == later.id  # it looked again: the next one
    cancelled = await s.producer.get_turn(turn.id)
    assert cancelled is not None and cancelled.status is TurnStatus.CANCELLED
    assert cancelled.started_at is None and cancelled.attempts == 0
    assert await s.producer.history(turn.session_id) == []
