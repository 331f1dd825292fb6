"""Server-Sent Events for one turn: ``GET /v1/turns/{turn_id}/events``.

    id: 1732450000000-0
    event: status
    data: {"type": "status", "status": "running", "turn_id": "..."}

The ``id`` is the Redis stream entry id, so a client that reconnects with
``Last-Event-ID`` gets exactly the events after it.  The stream ends after the
terminal status event; if the Redis stream was lost, Postgres supplies the final
status (its id then ends in ``-final``).  A comment line is sent whenever the
stream has been quiet for ``gateway_sse_heartbeat_s``, so proxies keep it open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator

from producer.client import AsyncClient
from producer.gateway import metrics
from shared.errors import InvalidInput
from shared.validation import check_event_id

log = logging.getLogger(__name__)

HEARTBEAT = b": keep-alive\n\n"
_EVENT_NAME = re.compile(r"^[a-z_]{1,32}$")
_END = object()


def encode(event_id: str, fields: dict[str, str], turn_id: str) -> bytes:
    name = fields.get("type", "")
    lines = [f"id: {event_id}"]
    if _EVENT_NAME.match(name):
        lines.append(f"event: {name}")
    data = json.dumps({**fields, "turn_id": turn_id}, ensure_ascii=False)
    lines.append(f"data: {data}")  # json.dumps never emits a raw newline
    return ("\n".join(lines) + "\n\n").encode()


def resume_from(last_event_id: str | None) -> str:
    """The Redis stream id to read after ("0-0": from the start)."""
    if not last_event_id:
        return "0-0"
    try:
        return check_event_id(last_event_id)
    except InvalidInput as exc:
        raise ValueError(exc.message) from exc


async def stream(
    client: AsyncClient,
    turn_id: str,
    user_id: str,
    after: str,
    *,
    heartbeat_s: float,
    idle_timeout_s: float,
) -> AsyncIterator[bytes]:
    """Yield encoded events; a pump task reads Redis so heartbeats never cancel a read."""
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in client.events(turn_id, user_id, after, idle_timeout=idle_timeout_s):
                queue.put_nowait(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("event stream stopped: %s", type(exc).__name__, exc_info=True)
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(_END)

    task = asyncio.create_task(pump(), name="turnq-sse-pump")
    metrics.STREAMS.inc()
    try:
        yield b"retry: 1000\n\n"
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), heartbeat_s)
            except TimeoutError:
                yield HEARTBEAT
                continue
            if item is _END:
                return
            if isinstance(item, Exception):
                error = {"type": "error", "error": "the event stream failed; reconnect to resume"}
                yield f"event: error\ndata: {json.dumps(error)}\n\n".encode()
                return
            assert isinstance(item, tuple)
            event_id, fields = item
            yield encode(event_id, fields, turn_id)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        metrics.STREAMS.dec()
