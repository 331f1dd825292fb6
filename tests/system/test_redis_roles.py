"""A whole turn with Celery's broker on one redis-server and turnq's state on another.

The queue keys (kicks, kombu's unacked set and bindings) exist only on the broker, the
session lock and the turn's event stream only on the state server.  Both are private
servers of this test; the worker, the producer and the reader are real.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from producer import Client
from shared import keys
from shared.settings import Settings
from shared.status import TurnStatus
from tests.support.servers import PrivateRedis
from tests.system.test_pipeline import wait_for

pytestmark = pytest.mark.system


@pytest.fixture
def servers() -> Iterator[tuple[PrivateRedis, PrivateRedis]]:
    with PrivateRedis() as broker, PrivateRedis() as state:
        yield broker, state


def names(client: redis.Redis) -> set[str]:
    return {k.decode() for k in client.scan_iter(count=1000)}


def test_a_turn_with_broker_and_state_on_two_servers(
    start_worker: Any,
    stack_env: dict[str, str],
    servers: tuple[PrivateRedis, PrivateRedis],
    uid: str,
) -> None:
    broker, state = servers
    ns = stack_env["TURNQ_NAMESPACE"]
    on_broker, on_state = broker.client(), state.client()
    settings = Settings(redis_url=state.url, broker_url=broker.url)
    try:
        with Client.from_settings(settings) as client:
            turn = client.enqueue(f"roles-{uid}", f"u-{uid}", "hello")  # no worker yet
            queue = keys.queue(keys.TURNS_QUEUE, ns)
            assert on_broker.llen(queue) == 1
            assert queue not in names(on_state)
            start_worker(
                "roles",
                TURNQ_REDIS_URL=state.url,
                TURNQ_BROKER_URL=broker.url,
                TURNQ_AGENT="tests.agents:slow_echo",
                TEST_MODEL_LATENCY_S="1.5",
            )
            wait_for(
                lambda: client.get_turn(turn.id).status is TurnStatus.RUNNING, 30, "not started"
            )
            record = client.session(f"roles-{uid}", f"u-{uid}")
            lock, events = keys.lock_key(record.id, ns), keys.events_key(turn.id, ns)
            wait_for(lambda: on_state.exists(events), 10, "no running event")
            running_state, running_broker = names(on_state), names(on_broker)
            assert lock in running_state and events in running_state
            assert "unacked" in running_broker  # the running kick, in kombu's ack emulation
            done = client.wait(turn.id, timeout=60)
            assert done.status is TurnStatus.SUCCEEDED
        final_state, final_broker = names(on_state), names(on_broker)
        assert events in final_state and lock not in final_state  # released
        turnq_keys = {k for k in running_broker | final_broker if k.startswith(f"{ns}turnq:")}
        assert turnq_keys == set()  # no lock, stream or mark on the broker
        queue_keys = {k for k in running_state | final_state if k.startswith(queue)}
        assert queue_keys == set() and not any(
            k.startswith(("unacked", "_kombu")) for k in final_state
        )
        assert any(k.startswith("_kombu.binding") for k in final_broker)
    finally:
        on_broker.close()
        on_state.close()
