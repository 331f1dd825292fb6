"""The worker's Celery app: ``celery -A workers.app worker -Q turns -P threads -c 200``.

Tasks are thin adapters: validate the id, hand the coroutine to the process's one
event loop (``workers.runtime``), and return.  Policy lives in ``workers/turn.py``.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from typing import Any

from celery import signals
from prometheus_client import start_http_server
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError

from shared.celery_app import make_celery
from shared.compaction.base import SummaryError
from shared.keys import COMPACT_TASK, DRAIN_TASK, REAP_TASK, SUMMARIZE_QUEUE
from shared.settings import get_settings
from workers.compact import compact
from workers.reaper import reap
from workers.runtime import Runtime, close_runtime, get_runtime
from workers.turn import drain

log = logging.getLogger(__name__)

app = make_celery(get_settings())


def send(task: str, session_id: str) -> None:
    """Publish a kick (ids only); routes put drains on `turns`, compactions on `summarize`."""
    app.send_task(task, args=[session_id])


def runtime() -> Runtime:
    rt = get_runtime()
    rt.send = send
    return rt


def _valid_uuid(value: object) -> str | None:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


# Postgres or Redis unreachable: retry the kick with backoff.  A kick carries only the
# session id and turns run by their sequence number, so a delayed kick cannot reorder
# anything; lock contention is never retried (the holder drains the session).  If the
# retries run out, the beat reaper re-kicks the session once it is reachable again.
INFRASTRUCTURE_ERRORS = (
    OperationalError,
    InterfaceError,
    RedisError,
    ConnectionError,
    TimeoutError,
)


@app.task(
    name=DRAIN_TASK,
    ignore_result=True,
    autoretry_for=INFRASTRUCTURE_ERRORS,
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=8,
)
def drain_task(session_id: Any) -> int:
    sid = _valid_uuid(session_id)
    if sid is None:
        log.error("drain: ignoring a kick with an invalid session id")
        return 0
    rt = runtime()
    return rt.run(drain(rt, sid))


@app.task(
    name=COMPACT_TASK,
    ignore_result=True,
    autoretry_for=(SummaryError, *INFRASTRUCTURE_ERRORS),
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=6,
)
def compact_task(session_id: Any) -> str:
    """Low-priority queue, own pool; never takes the session lock (I7)."""
    sid = _valid_uuid(session_id)
    if sid is None:
        log.error("compact: ignoring a request with an invalid session id")
        return "invalid"
    rt = runtime()
    return rt.run(compact(rt, sid))


@app.task(name=REAP_TASK, ignore_result=True)
def reap_task() -> int:
    rt = runtime()
    return rt.run(reap(rt))


READY_LINE = "turnq: worker ready"


def _lower_priority_if_summarizer(consumer: Any) -> None:
    """A summarize-only pool is the low-priority pool: it yields the CPU to chat (I7)."""
    try:
        queues = set(consumer.app.amqp.queues.consume_from)
    except AttributeError:
        return
    if queues and all(q.endswith(SUMMARIZE_QUEUE) for q in queues):
        nice = get_settings().summarizer_nice
        if nice:
            os.nice(nice)
            log.info("summarizer pool: CPU niceness +%d", nice)


@signals.worker_ready.connect
def _warm_up(sender: Any = None, **_: Any) -> None:
    """Connect and import the agent before the first kick, then say so (at any log level)."""
    _lower_priority_if_summarizer(sender)
    port = get_settings().metrics_port
    if port:
        start_http_server(port, addr="127.0.0.1" if get_settings().env != "prod" else "0.0.0.0")
    runtime()
    sys.stderr.write(f"{READY_LINE}\n")
    sys.stderr.flush()


@signals.worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    close_runtime()
