"""A producer's direct kick is the message Celery's own send_task would have queued."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared import keys
from shared.celery_app import make_celery
from shared.kick import send_kick
from shared.settings import get_settings

pytestmark = [pytest.mark.service, pytest.mark.anyio]

VARYING = {"id", "root_id", "origin", "correlation_id", "reply_to", "delivery_tag"}


def _shape(raw: bytes) -> dict[str, Any]:
    message = json.loads(raw)
    props = {k: v for k, v in message["properties"].items() if k not in VARYING}
    return {
        "top": sorted(message),
        "headers": {k: v for k, v in message["headers"].items() if k not in VARYING},
        "properties": props,
        "body": json.loads(base64.b64decode(message["body"])),
        "content": (message["content-type"], message["content-encoding"]),
    }


async def test_direct_kick_matches_send_task(stack_env: dict[str, str], uid: str) -> None:
    # A namespace of its own: the run's turns queue may hold other tests' leftover kicks.
    settings = get_settings().model_copy(update={"namespace": f"kick{uid}:"})
    app = make_celery(settings)
    queue = keys.queue(keys.TURNS_QUEUE, settings.namespace)
    sid = "0f8b1f3e-0000-4000-8000-000000000000"
    redis = aioredis.Redis.from_url(settings.require_redis_url())
    try:
        app.send_task(keys.DRAIN_TASK, args=[sid])
        await send_kick(redis, app, keys.DRAIN_TASK, sid)
        assert await redis.llen(queue) == 2
        by_celery, direct = await redis.rpop(queue), await redis.rpop(queue)
        assert _shape(direct) == _shape(by_celery)
        assert json.loads(direct)["headers"]["argsrepr"] == repr([sid])  # ids only (I10)
    finally:
        await redis.aclose()
        app.close()
