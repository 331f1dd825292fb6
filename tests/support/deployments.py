"""One ``TURNQ_AGENT`` deployment for system tests: workers, a gateway and a client that
share a namespace of their own, so several deployments can run side by side on the run's
Redis and Postgres without a kick for one reaching another's worker.

    with deployment(stack_env, "desks", "tests.agents:DESKS", gateway=True) as d:
        turn = d.client.enqueue("s1", "ann", "hi", agent="billing")
        api = d.api(database_url, "ann")          # the gateway, with a key for ann
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from producer import Client
from shared.settings import Settings
from tests.conftest import NAMESPACE
from tests.support.chaos_stack import UNTHROTTLED
from tests.support.workers import WorkerProcess
from tests.system.conftest import FAST_RECOVERY
from tests.system.test_gateway_support import Api, GatewayProcess, new_key


@dataclass
class Deployment:
    name: str
    env: dict[str, str]
    client: Client
    worker: WorkerProcess
    gateway: GatewayProcess | None = None
    _apis: list[Api] = field(default_factory=list)

    def api(self, database_url: str, user: str) -> Api:
        """The gateway with a new key for ``user`` (closed with the deployment)."""
        assert self.gateway is not None, "started without gateway=True"
        api = Api(self.gateway.url, new_key(database_url, user))
        self._apis.append(api)
        return api

    def logs(self) -> str:
        procs = [self.worker, *([self.gateway] if self.gateway else [])]
        return "\n".join(p.log_text()[-3000:] for p in procs)


def settings_of(env: dict[str, str]) -> Settings:
    """The settings the deployment's processes read from ``env``, for a client in this one."""
    given = {
        name: env[f"TURNQ_{name.upper()}"]
        for name in Settings.model_fields
        if f"TURNQ_{name.upper()}" in env
    }
    return Settings(**given)  # type: ignore[arg-type]


@contextmanager
def deployment(
    stack_env: dict[str, str], name: str, agent: str, *, gateway: bool = False, **extra: str
) -> Iterator[Deployment]:
    env = {
        **stack_env,
        **FAST_RECOVERY,
        **UNTHROTTLED,
        "TURNQ_NAMESPACE": f"{NAMESPACE}{name}:",
        "TURNQ_AGENT": agent,
        **extra,
    }
    with ExitStack() as stack:
        worker = WorkerProcess(env, name=f"{name}-{secrets.token_hex(3)}", concurrency=20)
        worker.start()
        stack.callback(worker.stop)
        gw = None
        if gateway:
            gw = GatewayProcess(env, f"gateway-{name}")
            gw.start()
            stack.callback(gw.stop)
        client = Client.from_settings(settings_of(env))
        stack.callback(client.close)
        d = Deployment(name, env, client, worker, gw)
        stack.callback(lambda: [api.close() for api in d._apis])
        yield d
