"""Redis is only the transport: a FLUSHALL mid-load delays turns, never loses them (I3)."""

from __future__ import annotations

from typing import Any

import pytest

from producer import Client
from shared.settings import Settings
from shared.status import TurnStatus
from tests.support.servers import PrivateRedis
from tests.system.test_pipeline import assert_consistent, wait_for

pytestmark = pytest.mark.system


def test_flushall_mid_load_loses_nothing(
    start_worker: Any, start_beat: Any, stack_env: dict[str, str], uid: str
) -> None:
    with PrivateRedis() as private:
        env = {"TURNQ_REDIS_URL": private.url}
        start_worker("w", TURNQ_AGENT="tests.agents:slow_echo", TEST_MODEL_LATENCY_S="0.5", **env)
        start_beat(**env)
        client = Client.from_settings(Settings(redis_url=private.url))
        try:
            user = f"u-{uid}"
            plan = {f"flush{i}-{uid}": [f"m{i}.{j}" for j in range(3)] for i in range(4)}
            turns = [client.enqueue(s, user, m) for s, msgs in plan.items() for m in msgs]
            wait_for(
                lambda: any(client.get_turn(t.id).status is TurnStatus.RUNNING for t in turns),
                30,
                "nothing started",
            )
            assert private.client().dbsize() > 0
            private.flushall()  # kicks, unacked messages and locks: all gone
            for t in turns:
                assert client.wait(t.id, timeout=60).status is TurnStatus.SUCCEEDED
            for session, msgs in plan.items():
                assert_consistent(client, session, user, msgs)
        finally:
            client.close()
