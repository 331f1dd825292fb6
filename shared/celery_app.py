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
"""

from __future__ import annotations

from datetime import timedelta

from celery import Celery

from shared.keys import (
    COMPACT_TASK,
    DRAIN_TASK,
    MAINTENANCE_QUEUE,
    REAP_TASK,
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
        broker_url=settings.redis_url,
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
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_hijack_root_logger=False,
        task_default_queue=queue(TURNS_QUEUE, ns),
        task_routes={
            DRAIN_TASK: {"queue": queue(TURNS_QUEUE, ns)},
            COMPACT_TASK: {"queue": queue(SUMMARIZE_QUEUE, ns)},
            REAP_TASK: {"queue": queue(MAINTENANCE_QUEUE, ns)},
        },
        beat_schedule={
            "reap-stuck-turns": {
                "task": REAP_TASK,
                "schedule": timedelta(seconds=settings.reaper_interval_s),
                "options": {
                    "queue": queue(MAINTENANCE_QUEUE, ns),
                    "expires": settings.reaper_interval_s,
                },
            },
        },
        beat_max_loop_interval=max(1.0, min(5.0, settings.reaper_interval_s)),
        worker_soft_shutdown_timeout=10.0,
        worker_enable_soft_shutdown_on_idle=True,
    )
    return app
