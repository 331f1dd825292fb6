"""Keep a worker alive when its Redis broker connection drops (Celery/kombu 5.7).

    from workers.broker import survive_broker_connection_loss
    survive_broker_connection_loss()        # once, when the worker's Celery app is built

On a lost broker connection Celery's consumer first *collects* the connection, which
detaches kombu's transport from it (``transport.client = None``), then closes it.  A
channel whose first close failed half-way (its in-flight ``BRPOP`` read hit the dead
socket) is closed again in the second pass, and its unacked-message restore, like every
late ack of a task that was running, builds a new connection pool from the detached
transport and dies with ``AttributeError: 'NoneType' object has no attribute 'hostname'``.
Celery treats that as unrecoverable and the worker exits: a Redis restart took down every
worker (found by tests/chaos/test_redis_faults.py).

Reporting it as the connection error it is lets Celery's own handling apply: the second
close is ignored, a late ack is logged ("Couldn't ack") and the consumer reconnects.  The
unacked kick stays in kombu's unacked set and is redelivered after ``visibility_timeout``,
which is harmless (a drain with nothing pending returns); the reaper re-runs its turn
long before that.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

_GUARD = "_turnq_detached_guard"


def survive_broker_connection_loss() -> None:
    """Make a detached kombu Redis channel raise a connection error (idempotent)."""
    channel: Any = kombu_redis.Channel
    original = channel._connparams
    if getattr(original, _GUARD, False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("the broker connection was closed under this channel")
        return original(self, asynchronous)

    setattr(_connparams, _GUARD, True)
    channel._connparams = _connparams
