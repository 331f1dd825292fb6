"""The gateway on real Redis and Postgres, no workers: uvicorn in a thread on a real
loopback socket.  Keys, the Redis token bucket, long-poll deadlines, heartbeats,
and 503 (never 500) when a dependency is down."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn

from producer.gateway.app import create_app
from producer.gateway.keys import KeyStore, create_key, list_keys, revoke_key
from producer.gateway.ratelimit import RateLimiter, rate_limit_key
from shared.settings import Settings
from shared.store import create_engine

pytestmark = pytest.mark.service


class ThreadServer:
    """uvicorn serving ``create_app(settings)`` on 127.0.0.1:<free port> in a thread."""

    def __init__(self, settings: Settings) -> None:
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)
        self.url = ""

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def settings(stack_env: dict[str, str]) -> Settings:
    return Settings(
        gateway_rate_per_s=1000,
        gateway_rate_burst=1000,
        gateway_sse_heartbeat_s=0.2,
        gateway_sse_idle_timeout_s=1.5,
        gateway_check_workers=False,
    )


@pytest.fixture
def server(settings: Settings) -> Iterator[ThreadServer]:
    with ThreadServer(settings) as s:
        yield s


def _client(server: ThreadServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=30)


def test_key_store_accepts_live_keys_only(database_url: str, uid: str) -> None:
    key = create_key(database_url, f"ks-{uid}", "laptop")
    store = KeyStore(create_engine(database_url.replace("postgresql://", "postgresql+psycopg://")))

    async def check(k: str) -> str | None:
        return await store.authenticate(k)

    async def run() -> list[str | None]:
        try:
            prefix, secret = key.split("_")[1], key.split("_", 2)[2]
            wrong = f"tq_{prefix}_{'A' * 43}"
            unknown = f"tq_{'0' * 12}_{secret}"
            return [await check(k) for k in (key, wrong, unknown, "garbage")]
        finally:
            await store.engine.dispose()

    assert asyncio.run(run()) == [f"ks-{uid}", None, None, None]
    listed = list_keys(database_url, f"ks-{uid}")
    assert [(k.name, k.revoked_at) for k in listed] == [("laptop", None)]
    assert revoke_key(database_url, key) is True
    assert revoke_key(database_url, key) is False, "already revoked"
    store = KeyStore(create_engine(database_url.replace("postgresql://", "postgresql+psycopg://")))
    assert asyncio.run(run())[0] is None


def test_token_bucket_in_redis(redis_url: str, uid: str) -> None:
    ns = f"svc{uid}:"

    async def run() -> tuple[list[Any], int]:
        r = aioredis.Redis.from_url(redis_url)
        try:
            limiter = RateLimiter(r, rate_per_s=2, burst=3, namespace=ns)
            decisions = [await limiter.hit("u") for _ in range(4)]
            other = await limiter.hit("v")
            ttl = await r.pttl(rate_limit_key("u", ns))
            await asyncio.sleep(0.6)  # 2/s refills one token in 0.5 s
            after = await limiter.hit("u")
            await r.delete(rate_limit_key("u", ns), rate_limit_key("v", ns))
            return [*decisions, other, after], ttl
        finally:
            await r.aclose()

    decisions, ttl = asyncio.run(run())
    assert [d.allowed for d in decisions] == [True, True, True, False, True, True]
    assert decisions[3].retry_after_s == 1
    assert 0 < ttl <= 2500, "the bucket expires once it would be full again"


def test_long_poll_answers_at_the_deadline_with_the_current_status(
    server: ThreadServer, database_url: str, uid: str
) -> None:
    with _client(server, create_key(database_url, f"lp-{uid}")) as c:
        turn = c.post(f"/v1/sessions/lp-{uid}/turns", json={"content": "nobody runs me"}).json()
        started = time.monotonic()
        r = c.get(f"/v1/turns/{turn['turn_id']}", params={"wait": 1})
        elapsed = time.monotonic() - started
        assert r.status_code == 200 and r.json()["status"] == "queued"
        assert r.json()["terminal"] is False
        assert 0.9 <= elapsed < 5, elapsed
        missing = c.get(f"/v1/turns/{uuid.uuid4()}", params={"wait": 5})
        assert missing.status_code == 404


def test_quiet_streams_send_heartbeats_then_end_after_the_idle_timeout(
    server: ThreadServer, database_url: str, uid: str
) -> None:
    with _client(server, create_key(database_url, f"hb-{uid}")) as c:
        turn = c.post(f"/v1/sessions/hb-{uid}/turns", json={"content": "queued forever"}).json()
        started = time.monotonic()
        with c.stream("GET", f"/v1/turns/{turn['turn_id']}/events") as r:
            assert r.status_code == 200
            lines = list(r.iter_lines())
        assert lines.count(": keep-alive") >= 3, lines
        assert not [line for line in lines if line.startswith("data:")]
        assert time.monotonic() - started < 10


def test_postgres_down_is_503_never_500(stack_env: dict[str, str]) -> None:
    down = Settings(
        database_url="postgresql://postgres@127.0.0.1:1/none", gateway_check_workers=False
    )
    with ThreadServer(down) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        health = c.get("/healthz")
        assert health.status_code == 503 and health.headers["content-type"] == "application/json"
        assert health.json()["checks"]["postgres"]["status"] == "down"
        assert health.json()["checks"]["redis"]["status"] == "ok"
        r = c.get("/v1/sessions", headers={"X-API-Key": f"tq_{'a' * 12}_{'b' * 43}"})
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["retry-after"] and r.json()["code"] == "unavailable"
        assert "Postgres" in r.json()["detail"]
