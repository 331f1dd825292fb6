"""Baseline: a raw Celery no-op task on the same broker.

celery -A benchmarks.raw_celery worker
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from benchmarks.common import RAW_READY as READY

QUEUE = os.environ.get("BENCH_RAW_QUEUE", "bench-raw")
app = Celery(
    "bench_raw", broker=os.environ["TURNQ_REDIS_URL"], backend=os.environ["TURNQ_REDIS_URL"]
)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
)


@worker_ready.connect
def _announce(**_: Any) -> None:  # seen at any log level, so workers can run at WARNING
    print(READY, flush=True)


@app.task(name="bench.noop")
def noop() -> None:
    return None
