"""A drain runs on the process's event loop, not in a Celery pool thread (decision 0009).

    @app.task(name=DRAIN_TASK, Request=DrainRequest)
    def drain_task(session_id):
        hand_off(drain_task.request.id, rt.start(drain(rt, session_id)))   # returns at once

The kick's task hands its drain coroutine to the loop and returns, so a turn in flight
holds no thread and one process keeps thousands of turns in flight.  ``task_acks_late``
keeps its meaning because ``DrainRequest``, the drain task's Celery request, defers the
ack until the drain has ended: until then the kick stays in kombu's unacked set (so a
worker killed mid-drain has it redelivered after ``visibility_timeout``, as before) and
counts against the prefetch limit (``worker_prefetch_multiplier`` x concurrency), so a
worker never holds more drains than its concurrency.  At warm shutdown ``DrainsInFlight``
waits for the drains (each finishes its current turn and hands the rest of its session
on) before Celery closes the broker connection, so their acks still reach Redis.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from celery import bootsteps
from celery.worker.request import Request

from shared.settings import get_settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_unacked: dict[str, Future[Any]] = {}  # task id -> its drain, until its request acks
_running: set[Future[Any]] = set()
# Acks are short blocking Redis calls: one thread of their own keeps them off the loop.
_acks = ThreadPoolExecutor(1, thread_name_prefix="turnq-ack")


def hand_off(task_id: str, drain: Future[Any]) -> None:
    """The drain of this task runs on; its request acks the kick when the drain ends."""
    with _lock:
        _running.add(drain)
        _unacked[task_id] = drain
    drain.add_done_callback(_finished)


def _finished(drain: Future[Any]) -> None:
    with _lock:
        _running.discard(drain)
    error = None if drain.cancelled() else drain.exception()
    if error is not None:  # Celery no longer sees it: say it here (the reaper recovers)
        log.error("drain failed", exc_info=error)


def wait_for_drains(timeout: float) -> int:
    """Wait up to ``timeout`` seconds for every drain in flight; returns how many remain."""
    with _lock:
        running = list(_running)
    _, not_done = wait(running, timeout)
    return len(not_done)


class DrainRequest(Request):  # type: ignore[misc]
    """Celery acks an ``acks_late`` task when its function returns; a handed-off drain's
    kick is acked when the drain ends instead (whatever ended it)."""

    def acknowledge(self) -> None:
        with _lock:
            drain = _unacked.pop(self.id, None)
        if drain is None:  # not handed off (refused, failed before): ack now
            super().acknowledge()
            return
        drain.add_done_callback(lambda _: _acks.submit(self._acknowledge_now))

    def _acknowledge_now(self) -> None:
        try:
            Request.acknowledge(self)
        except Exception:  # the broker connection is gone: redelivered later, harmless
            log.warning("could not ack a finished drain's kick", exc_info=True)


class DrainsInFlight(bootsteps.StartStopStep):  # type: ignore[misc]
    """Warm shutdown: the drains finish (their current turn) while the broker is open."""

    requires = ("celery.worker.components:Pool",)

    def stop(self, parent: Any) -> None:
        bound = get_settings().turn_timeout_s + 10
        left = wait_for_drains(bound)
        if left:
            log.warning("%d drains still running after %.0f s; kicks redelivered", left, bound)
        _acks.submit(lambda: None).result(10)  # the acks queued before it are sent
