"""workers.broker: a channel whose transport was detached reports a connection error."""

from __future__ import annotations

from typing import Any

import pytest
from kombu.connection import Connection
from kombu.transport import redis as kombu_redis

from workers.broker import survive_broker_connection_loss


def test_detached_channel_raises_a_connection_error_not_attribute_error() -> None:
    survive_broker_connection_loss()
    survive_broker_connection_loss()  # idempotent
    conn: Any = Connection("redis://127.0.0.1:1/0")  # type: ignore[no-untyped-call]
    transport: Any = conn.transport
    channel: Any = object.__new__(kombu_redis.Channel)  # no __init__: it would connect
    channel.connection = transport
    assert channel._connparams()["port"] == 1  # attached: kombu's own parameters
    transport.client = None  # what kombu's Connection.collect() does to a lost connection
    with pytest.raises(conn.connection_errors) as raised:
        channel._connparams()
    assert "closed under this channel" in str(raised.value)
