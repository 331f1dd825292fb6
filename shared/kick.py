"""A producer's kick: a Celery task message pushed with one LPUSH on its own async Redis.

    await send_kick(broker, app, DRAIN_TASK, session_id)   # broker: TURNQ_BROKER_URL's Redis

``app.send_task`` is synchronous: from an event loop it needs a thread hop, and with
kombu's producer machinery it costs ~0.45 ms a kick against ~0.08 ms for the LPUSH
it ends in (docs/decisions/0005).  This builds the same message -- Celery's own
protocol-2 headers from ``app.amqp.as_task_v2``, kombu's Redis envelope -- and pushes
it onto the task's queue, exactly where ``send_task`` would (the default exchange
routes by queue name; turnq uses no priorities).  Workers, Flower and redelivery see
an ordinary Celery message.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from celery import Celery
from redis.asyncio import Redis


def kick_message(app: Celery, task: str, session_id: str) -> tuple[str, bytes]:
    """(queue, message) for a task whose only argument is a session id."""
    queue = app.amqp.router.route({}, task)["queue"].name
    task_id = str(uuid.uuid4())
    message = app.amqp.as_task_v2(task_id, task, args=[session_id], kwargs={}, ignore_result=None)
    body = json.dumps(message.body).encode()
    envelope: dict[str, Any] = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": message.headers,
        "properties": {
            **message.properties,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return queue, json.dumps(envelope).encode()


async def send_kick(broker: Redis, app: Celery, task: str, session_id: str) -> None:
    queue, message = kick_message(app, task, session_id)
    await broker.lpush(queue, message)
