"""Postgres stores, one per role: producers, workers, the beat maintenance jobs.

    db = Database.connect(settings.require_database_url(), settings.db_pool_size,
                          namespace=settings.namespace)
    turn, created, _ = await ProducerStore(db).enqueue("alice", "support-1", "Hi", None)
    claim = await WorkerStore(db).claim(turn.session_id, None, max_lost=3)

The stores only store: which status changes are legal lives in ``shared.status``, and
every status change is a guarded statement of ``shared/sql``.  When to make them lives
in ``workers/`` (drain, reaper) and ``producer/`` (enqueue, cancel).
"""

from shared.store.db import Database, create_engine
from shared.store.maintenance import MaintenanceStore
from shared.store.producer import ProducerStore
from shared.store.records import (
    TURN_COLUMNS,
    Claim,
    Context,
    Item,
    SessionRecord,
    TurnRecord,
    estimate_tokens,
    session_of,
    turn_of,
)
from shared.store.worker import WorkerStore

__all__ = [
    "TURN_COLUMNS",
    "Claim",
    "Context",
    "Database",
    "Item",
    "MaintenanceStore",
    "ProducerStore",
    "SessionRecord",
    "TurnRecord",
    "WorkerStore",
    "create_engine",
    "estimate_tokens",
    "session_of",
    "turn_of",
]
