"""The worker's Celery app: ``celery -A workers.app worker -Q turns -P threads -c 200``.

Tasks are thin adapters: validate the id, hand the coroutine to the process's one
event loop (``workers.runtime``), and return.  Policy lives in ``workers/turn.py``.
A drain does not even wait for its coroutine: it runs on while the task's thread is
free again, and its kick is acked when it ends (``workers/handoff.py``, decision 0009).
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

from celery import signals
from celery.utils.time import get_exponential_backoff_interval
from prometheus_client import start_http_server
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError

from shared.celery_app import make_celery
from shared.compaction.base import SummaryError
from shared.keys import (
    CLUSTER_METRICS_TASK,
    COMPACT_TASK,
    DRAIN_TASK,
    REAP_TASK,
    RETENTION_TASK,
    SUMMARIZE_QUEUE,
)
from shared.logging import bind_log_context, configure_logging
from shared.metrics import register_cluster_collector
from shared.settings import get_settings
from workers.broker import survive_broker_connection_loss
from workers.compact import compact
from workers.handoff import DrainRequest, DrainsInFlight, hand_off
from workers.maintenance import WorkerHeartbeat, expire_sessions, publish_cluster_metrics
from workers.reaper import reap
from workers.runtime import Runtime, close_runtime, get_runtime
from workers.turn import drain

log = logging.getLogger(__name__)
T = TypeVar("T")

app = make_celery(get_settings())
survive_broker_connection_loss()  # a Redis restart must not take the worker down


app.steps["worker"].add(DrainsInFlight)  # warm shutdown waits for the handed-off drains


def send(task: str, session_id: str, **options: Any) -> None:
    """Publish a kick (ids only); routes put drains on `turns`, compactions on `summarize`."""
    app.send_task(task, args=[session_id], **options)


def runtime() -> Runtime:
    rt = get_runtime()
    rt.send = send
    return rt


async def _in_context(coro: Coroutine[Any, Any, T], **fields: Any) -> T:
    """Run on the runtime loop with log fields bound (the loop task has its own context)."""
    with bind_log_context(**fields):
        return await coro


def _task_fields(task: Any, **fields: Any) -> dict[str, Any]:
    return {"task_name": task.name, "task_id": task.request.id, **fields}


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
    Request=DrainRequest,
    autoretry_for=INFRASTRUCTURE_ERRORS,
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=8,
)
def drain_task(session_id: Any) -> None:
    """Hand the drain to the loop and return: a turn in flight holds no thread."""
    sid = _valid_uuid(session_id)
    if sid is None:
        log.error("drain: ignoring a kick with an invalid session id")
        return
    rt = runtime()
    request = drain_task.request
    job = _in_context(
        drain_or_retry(rt, sid, request.retries or 0), **_task_fields(drain_task, session_id=sid)
    )
    if request.id is None:  # called directly, not by a worker: nothing to ack later
        rt.run(job)
        return
    hand_off(request.id, rt.start(job))


async def drain_or_retry(rt: Runtime, session_id: str, retries: int) -> int:
    """The drain, retried with the task's own backoff when Postgres or Redis failed.

    It runs after its task returned, so Celery's ``autoretry_for`` cannot see its errors:
    this sends the retry itself, as ``Task.retry`` would (a new kick with a countdown).
    Out of retries, the reaper re-kicks the session once it is reachable again.
    """
    try:
        return await drain(rt, session_id)
    except INFRASTRUCTURE_ERRORS as exc:
        error = type(exc).__name__
        if retries >= drain_task.max_retries:
            log.warning("drain failed, out of retries; the reaper re-kicks", extra={"error": error})
            return 0
        countdown = get_exponential_backoff_interval(
            drain_task.retry_backoff, retries, drain_task.retry_backoff_max, drain_task.retry_jitter
        )
        log.info("drain failed; retrying", extra={"error": error, "countdown": countdown})
        await rt.kick(DRAIN_TASK, session_id, countdown=countdown, retries=retries + 1)
        return 0


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
    return rt.run(_in_context(compact(rt, sid), **_task_fields(compact_task, session_id=sid)))


@app.task(name=REAP_TASK, ignore_result=True)
def reap_task() -> int:
    rt = runtime()
    return rt.run(_in_context(reap(rt), **_task_fields(reap_task)))


@app.task(name=RETENTION_TASK, ignore_result=True)
def retention_task() -> int:
    """Delete sessions idle past TURNQ_SESSION_RETENTION_S (bounded batches; one runner)."""
    rt = runtime()
    job = expire_sessions(rt.redis, rt.db.engine, rt.settings)
    report = rt.run(_in_context(job, **_task_fields(retention_task)))
    return report.deleted if report else 0


@app.task(name=CLUSTER_METRICS_TASK, ignore_result=True)
def cluster_metrics_task() -> bool:
    """Snapshot queue depths and turn counts into Redis for every /metrics to expose."""
    rt = runtime()
    job = publish_cluster_metrics(
        rt.redis, rt.db.engine, rt.settings, rt.policy.trigger_tokens, broker=rt.broker
    )
    return rt.run(_in_context(job, **_task_fields(cluster_metrics_task))) is not None


READY_LINE = "turnq: worker ready"
_heartbeat: WorkerHeartbeat | None = None


def _role(consumer: Any) -> str:
    """``summarizer`` for a worker that consumes only the summarize queue."""
    try:
        queues = set(consumer.app.amqp.queues.consume_from)
    except AttributeError:
        return "worker"
    return "summarizer" if queues and all(q.endswith(SUMMARIZE_QUEUE) for q in queues) else "worker"


@signals.setup_logging.connect
def _setup_logging(loglevel: Any = None, logfile: Any = None, **_: Any) -> None:
    """Workers and beat log structured lines (shared.logging) instead of Celery's format."""
    configure_logging(get_settings(), level=loglevel or logging.INFO, logfile=logfile or None)


def _lower_priority_if_summarizer(consumer: Any) -> None:
    """A summarize-only pool is the low-priority pool: it yields the CPU to chat (I7)."""
    if _role(consumer) == "summarizer":
        nice = get_settings().summarizer_nice
        if nice:
            os.nice(nice)
            log.info("summarizer pool: CPU niceness +%d", nice)


@signals.worker_ready.connect
def _warm_up(sender: Any = None, **_: Any) -> None:
    """Connect and import the agent before the first kick, then say so (at any log level)."""
    _lower_priority_if_summarizer(sender)
    settings = get_settings()
    if settings.metrics_port:
        register_cluster_collector(settings.require_redis_url())
        addr = "127.0.0.1" if settings.env != "prod" else "0.0.0.0"
        start_http_server(settings.metrics_port, addr=addr)
    rt = runtime()
    global _heartbeat
    try:
        _heartbeat = WorkerHeartbeat(settings, _role(sender))
        _heartbeat.start(rt, getattr(sender, "timer", None))
    except OSError:  # `turnq health` will say so; the worker itself can still serve
        log.exception("cannot write the liveness heartbeat under %s", settings.run_dir)
    sys.stderr.write(f"{READY_LINE}\n")
    sys.stderr.flush()


@signals.worker_shutting_down.connect
def _stop_claiming(**_: Any) -> None:
    """Warm shutdown: drains finish their current turn and re-kick the rest of the session."""
    get_runtime().stopping = True


@signals.worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.file.remove()  # a stopped worker is not a stale one
    close_runtime()
