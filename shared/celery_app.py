"""The Celery app definition shared by producers (which only send) and workers.

    app = make_celery(get_settings())
    app.send_task(DRAIN_TASK, args=[session_id], queue=queue(TURNS_QUEUE, ns))

Why these settings (measured in ``shared/research/celery-redis.md``):

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a kick whose worker dies is
  redelivered, never acked as done.  Redelivery is the slow path (Redis ack
  emulation restores unacked messages only after ``visibility_timeout``); the beat
  reaper, which re-kicks any session with a pending turn and no live lock, is the
  fast one.  A drain is idempotent, so a duplicate kick costs one failed ``SET NX``.
* ``visibility_timeout`` (default 1 h) must exceed the longest drain, or Redis
  hands the message to a second worker while the first still runs it; that copy
  finds the lock held and exits, so even then nothing runs twice.
* ``worker_prefetch_multiplier=1``: a worker reserves only as many kicks as it has
  slots, so kicks never sit behind a busy worker while another idles.
* ``task_ignore_result``: results live in Postgres; no result backend round trips.
* Messages carry ids only (I10): JSON serializer, args = [session_id].
* The broker is ``TURNQ_BROKER_URL`` (default: the state Redis, ``TURNQ_REDIS_URL``): the
  queues can live on a Redis of their own, sized and restarted apart from the locks and
  event streams (``shared/keys.py`` says which key lives where).
* Beat (``beat_schedule``): reaper, cluster metrics snapshot, session retention, all on
  the ``maintenance`` queue and each guarded by its own single-runner Redis lock, so a
  second beat is harmless.  ``HeartbeatScheduler`` writes beat's liveness file.
* Logging: ``workers.app`` answers Celery's ``setup_logging`` signal with
  ``shared.logging.configure_logging`` (JSON lines by default), so Celery installs no
  handlers of its own and leaves stdout alone.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery

from shared.keys import (
    CLUSTER_METRICS_TASK,
    COMPACT_TASK,
    DRAIN_TASK,
    MAINTENANCE_QUEUE,
    REAP_TASK,
    RETENTION_TASK,
    SUMMARIZE_QUEUE,
    TURNS_QUEUE,
    queue,
)
from shared.settings import Settings


def make_celery(settings: Settings, *, main: str = "turnq") -> Celery:
    app = Celery(main)
    ns = settings.namespace
    vt = settings.visibility_timeout_s
    transport = {
        "visibility_timeout": vt,
        "unacked_restore_throttle": 1,
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 10,
    }
    app.conf.update(
        broker_url=settings.broker,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        visibility_timeout=vt,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Off by default (decision 0010); worker heartbeats go either way, so Flower still
        # shows workers and queue lengths.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=False,  # a publish per kick; Flower learns of tasks from workers
        worker_hijack_root_logger=False,
        task_default_queue=queue(TURNS_QUEUE, ns),
        # Namespaced control and event exchanges: Flower and `celery inspect` on a shared
        # Redis see only this deployment's workers and tasks.
        control_exchange=f"{ns}celery",
        event_exchange=f"{ns}celeryev",
        task_routes={
            DRAIN_TASK: {"queue": queue(TURNS_QUEUE, ns)},
            COMPACT_TASK: {"queue": queue(SUMMARIZE_QUEUE, ns)},
            REAP_TASK: {"queue": queue(MAINTENANCE_QUEUE, ns)},
            RETENTION_TASK: {"queue": queue(MAINTENANCE_QUEUE, ns)},
            CLUSTER_METRICS_TASK: {"queue": queue(MAINTENANCE_QUEUE, ns)},
        },
        beat_schedule=beat_schedule(settings),
        beat_scheduler="workers.maintenance:HeartbeatScheduler",
        beat_max_loop_interval=max(1.0, min(5.0, settings.reaper_interval_s)),
        # No soft shutdown: on the threads pool it fails (NotImplementedError(kill_job)).
        # SIGTERM is a warm shutdown: running drains finish their current turn, hand the
        # rest of their session back (a re-kick), and the worker exits.
    )
    return app


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The beat jobs, all on the ``maintenance`` queue, each safe to run twice.

    ``expires`` drops a job message nobody consumed within its interval, so a stopped
    maintenance pool does not come back to a pile of stale jobs.  Retention is only
    scheduled when ``TURNQ_SESSION_RETENTION_S`` is set.
    """
    maintenance = queue(MAINTENANCE_QUEUE, settings.namespace)

    def job(task: str, every: float) -> dict[str, Any]:
        return {
            "task": task,
            "schedule": timedelta(seconds=every),
            "options": {"queue": maintenance, "expires": every},
        }

    jobs = {
        "reap-stuck-turns": job(REAP_TASK, settings.reaper_interval_s),
        "publish-cluster-metrics": job(CLUSTER_METRICS_TASK, settings.cluster_metrics_interval_s),
    }
    if settings.session_retention_s > 0:
        jobs["expire-idle-sessions"] = job(RETENTION_TASK, settings.retention_interval_s)
    return jobs
