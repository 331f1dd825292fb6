"""A started gateway and echo worker for the chaos tests that talk HTTP (tests/chaos)."""

from __future__ import annotations

import secrets

from tests.support.workers import WorkerProcess
from tests.system.conftest import FAST_RECOVERY
from tests.system.test_gateway_support import GatewayProcess

UNTHROTTLED = {"TURNQ_GATEWAY_RATE_PER_S": "100000", "TURNQ_GATEWAY_RATE_BURST": "100000"}


def gateway_and_worker(
    env: dict[str, str], name: str, *, access_log: bool = False
) -> tuple[GatewayProcess, WorkerProcess]:
    """`turnq gateway` without rate limits and a `tests.agents:echo` worker, both ready
    (the gateway loads the same agent, so it knows the agent name ``echo``).

    The caller stops both (worker first); if the worker fails to start, the gateway is
    stopped here."""
    gateway = GatewayProcess(
        {**env, **UNTHROTTLED, "TURNQ_AGENT": "tests.agents:echo"}, f"gateway-{name}"
    )
    if access_log:
        gateway.args.remove("--no-access-log")
    worker_env = {**env, **FAST_RECOVERY, "TURNQ_AGENT": "tests.agents:echo"}
    worker = WorkerProcess(worker_env, name=f"{name}-{secrets.token_hex(3)}", concurrency=8)
    gateway.start()
    try:
        worker.start()
    except BaseException:
        gateway.stop()
        raise
    return gateway, worker
