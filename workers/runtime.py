"""One long-lived asyncio loop per worker process, shared by every Celery thread.

Celery's ``threads`` pool hands each kick to a thread; the thread submits the drain
coroutine to this loop and returns (``workers/handoff.py``: its kick is acked when the
drain ends).  All model calls, Postgres and Redis I/O of the process therefore share one
loop, one connection pool and one HTTP client, and thousands of turns are in flight at
once without a thread each (I6).  A single loop also avoids "attached to a different
loop" errors that per-task ``asyncio.run`` causes with pooled async clients.

    rt = get_runtime()
    future = rt.start(drain(rt, session_id))    # runs on; rt.run(...) waits for it
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from agents import ModelSettings, RunConfig

from shared.compaction.base import ContextPolicy, Summarizer, policy_from_settings
from shared.loop import LoopThread
from shared.models import build_model_provider
from shared.registry import Registry, registry_for
from shared.settings import Settings, get_settings
from shared.store import Database, MaintenanceStore, WorkerStore
from shared.tokens import TokenEstimator, default_estimator
from workers.agent import (
    approval_ttls,
    load_context_overrides,
    non_idempotent_tools,
    wrap_agent_models,
)
from workers.context import budget_filter
from workers.journal import wrap_tools
from workers.models import TurnqProvider
from workers.streaming import CancelListener, Publisher

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Runtime:
    settings: Settings
    portal: LoopThread
    db: Database
    redis: aioredis.Redis  # state: locks, event streams, cancel channel, marks
    broker: aioredis.Redis  # Celery's queues (depth reads); the same client on one server
    registry: Registry
    run_config: RunConfig
    policy: ContextPolicy
    estimator: TokenEstimator
    approval_ttl: tuple[float, dict[str, float]] = (24 * 3600.0, {})
    calibration: float = 1.0  # measured/estimated tokens, updated as models report usage
    send: Callable[..., None] | None = None  # (task name, session id, **options); workers.app
    _summarizer: Summarizer | None = None
    _cancels: CancelListener | None = None
    _publisher: Publisher | None = None
    stopping: bool = False  # warm shutdown began: finish the current turn, claim no more

    def __post_init__(self) -> None:
        self.turns = WorkerStore(self.db)
        self.sweeps = MaintenanceStore(self.db)

    @property
    def cancels(self) -> CancelListener:
        """Created on first use, on the loop (it subscribes to the cancel channel)."""
        if self._cancels is None:
            self._cancels = CancelListener(self)
        return self._cancels

    @property
    def publisher(self) -> Publisher:
        """Every turn's stream events of this process (one text stream, one sender)."""
        if self._publisher is None:
            self._publisher = Publisher(self.redis, self.settings)
        return self._publisher

    def send_task(self, task: str, session_id: str, **options: Any) -> None:
        if self.send is None:
            raise RuntimeError("runtime has no sender; workers.app sets it")
        self.send(task, session_id, **options)

    async def kick(self, task: str, session_id: str, wait_s: float = 10.0, **options: Any) -> bool:
        """Publish a kick from the loop without ever hanging it (a publish can block on
        the broker connection pool); a kick that is not sent is left to the reaper.
        ``options``: Celery's (``countdown``, ``retries``)."""
        try:
            send = functools.partial(self.send_task, task, session_id, **options)
            await asyncio.wait_for(asyncio.to_thread(send), wait_s)
            return True
        except Exception:
            log.warning("kick not sent; the reaper will retry", extra={"task": task}, exc_info=True)
            return False

    def summarizer(self) -> Summarizer:
        if self._summarizer is None:
            from shared.compaction.model_summarizer import load_summarizer

            self._summarizer = load_summarizer(self.settings.summarizer, self.settings)
        return self._summarizer

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.portal.run(coro, timeout)

    def start(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run on the loop without waiting (a handed-off drain)."""
        return self.portal.submit(coro)

    def close(self) -> None:
        async def _close() -> None:
            if self._cancels is not None:
                await self._cancels.close()
            await self.db.close()
            await self.redis.aclose()
            if self.broker is not self.redis:
                await self.broker.aclose()

        try:
            self.run(_close(), timeout=10)
        except Exception:  # shutting down: nothing useful to do with it
            log.exception("runtime close failed")
        self.portal.stop()


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = _build(get_settings())
        return _runtime


def close_runtime() -> None:
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close()
            _runtime = None


def _build(settings: Settings) -> Runtime:
    portal = LoopThread("turnq-loop")

    async def _connect() -> tuple[Database, aioredis.Redis, aioredis.Redis]:
        db = Database.connect(
            settings.require_database_url(),
            settings.db_pool_size,
            settings.db_pool_timeout_s,
            namespace=settings.namespace,
        )
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.require_redis_url(),
            max_connections=settings.redis_pool_size,
            timeout=10,  # waiting for a free connection: then a RedisError, as if Redis were down
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=10,
        )
        redis = aioredis.Redis.from_pool(pool)
        broker = redis
        if settings.separate_broker:  # only queue depths are read here: a few connections
            broker = aioredis.Redis.from_url(
                settings.require_broker_url(), socket_timeout=10, socket_connect_timeout=5
            )
        return db, redis, broker

    db, redis, broker = portal.run(_connect())
    registry = registry_for(settings.agent, settings.context_factory)
    wrap_agent_models(registry, settings.chat_model)  # every model call through turnq
    wrap_tools(  # every tool call journaled (I14)
        registry, non_idempotent_tools(settings.agent), settings.unknown_outcome == "ask_human"
    )
    run_config = RunConfig(
        # Every model name (and every agent without a model, handoff targets included)
        # resolves through the deployment's provider: offline, a base URL, or OpenAI.
        model_provider=TurnqProvider(build_model_provider(settings)),
        # Streamed Chat Completions report usage only when asked; usage drives the budget.
        model_settings=ModelSettings(include_usage=True),
        tracing_disabled=not settings.tracing,
        trace_include_sensitive_data=False,
        call_model_input_filter=budget_filter,  # the running turn's CallBudget
    )
    estimator = default_estimator()
    policy = policy_from_settings(settings, load_context_overrides(settings.agent))
    return Runtime(
        settings,
        portal,
        db,
        redis,
        broker,
        registry,
        run_config,
        policy=policy,
        estimator=estimator,
        approval_ttl=approval_ttls(settings.agent, settings.approval_ttl_s),
    )
