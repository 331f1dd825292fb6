"""Baseline: a raw Celery no-op task on the same broker.

celery -A benchmarks.raw_celery worker
"""

from __future__ import annotations

import os

from celery import Celery

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


@app.task(name="bench.noop")
def noop() -> None:
    return None
