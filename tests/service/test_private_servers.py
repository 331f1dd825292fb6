"""The private servers and proxy that chaos tests use to break things on purpose."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.servers import PrivatePostgres, PrivateRedis, TcpProxy, free_port, wait_until

pytestmark = [pytest.mark.service, pytest.mark.timeout(60)]


def _client(port: int, **kwargs: Any) -> redis.Redis:
    """No retries: these tests want to see every failure, not redis-py papering over it."""
    return redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0), **kwargs)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    with PrivateRedis() as r:
        yield r


def test_private_redis_restart_keeps_the_port_and_flushall_empties_it(
    private_redis: PrivateRedis,
) -> None:
    port = private_redis.port
    assert port != 6379
    with contextlib.closing(private_redis.client()) as client:
        client.set("k", "v")
        private_redis.flushall()
        assert client.dbsize() == 0
        client.set("k", "v")

    private_redis.restart()
    assert private_redis.port == port
    with contextlib.closing(private_redis.client()) as client:
        assert client.ping()
        assert client.dbsize() == 0  # no persistence: a restart is an empty server


def test_private_redis_kill_then_restart(private_redis: PrivateRedis) -> None:
    with contextlib.closing(_client(private_redis.port, single_connection_client=True)) as client:
        assert client.ping()
        private_redis.kill()
        assert not private_redis.running
        with pytest.raises(redis.ConnectionError):
            client.ping()
        private_redis.restart()
        assert client.ping()


def test_private_postgres_stop_refuses_connections_and_start_brings_the_data_back() -> None:
    with PrivatePostgres(database="chaos") as pg:
        assert pg.port != 5432
        port = pg.port
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (v int)")
            conn.execute("INSERT INTO t VALUES (1)")
        held = psycopg.connect(pg.url, autocommit=True)

        pg.stop()
        with pytest.raises(psycopg.OperationalError, match="refused"):
            psycopg.connect(pg.url, connect_timeout=2).close()
        with pytest.raises(psycopg.OperationalError):  # fast shutdown ended the open session
            held.execute("SELECT 1")
        held.close()

        pg.start()
        assert pg.port == port
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT v FROM t").fetchall() == [(1,)]


def test_private_postgres_kill_then_start_recovers() -> None:
    with PrivatePostgres() as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (v int)")
            conn.execute("INSERT INTO t VALUES (2)")
        pg.kill()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.url, connect_timeout=2).close()
        pg.start()  # crash recovery
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT v FROM t").fetchall() == [(2,)]


def test_proxy_passes_traffic_and_cut_breaks_open_links(private_redis: PrivateRedis) -> None:
    with (
        TcpProxy("127.0.0.1", private_redis.port) as proxy,
        contextlib.closing(_client(proxy.port, single_connection_client=True)) as client,
    ):
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert proxy.link_count == 1

        proxy.cut()
        with pytest.raises(redis.ConnectionError):
            client.get("k")
        assert client.get("k") == b"v"  # a new link works at once
        with contextlib.closing(_client(proxy.port)) as fresh:
            assert fresh.get("k") == b"v"


def test_proxy_cut_breaks_a_blocking_read_in_flight(private_redis: PrivateRedis) -> None:
    """What a worker parked in BRPOP sees when its link to Redis drops."""
    errors: list[BaseException] = []

    def block() -> None:
        with contextlib.closing(_client(proxy.port, socket_timeout=20)) as client:
            try:
                client.blpop(["nothing-comes"], timeout=15)
            except redis.ConnectionError as exc:
                errors.append(exc)

    with TcpProxy("127.0.0.1", private_redis.port) as proxy:
        reader = threading.Thread(target=block)
        reader.start()
        with contextlib.closing(private_redis.client()) as admin:
            wait_until(
                lambda: admin.info("clients")["blocked_clients"] == 1,
                timeout=5,
                message="client never blocked",
            )
        proxy.cut()
        reader.join(5)
        assert not reader.is_alive()
        assert len(errors) == 1


def test_proxy_pause_holds_new_links_until_resume(private_redis: PrivateRedis) -> None:
    with TcpProxy("127.0.0.1", private_redis.port) as proxy:
        with contextlib.closing(_client(proxy.port, single_connection_client=True)) as before:
            assert before.ping()
            results: list[object] = []
            proxy.pause()
            assert before.ping()  # links that were open keep working

            def ping() -> None:
                with contextlib.closing(_client(proxy.port, socket_timeout=10)) as client:
                    results.append(client.ping())

            late = threading.Thread(target=ping)
            late.start()
            wait_until(lambda: proxy.held_count == 1, timeout=5, message="link was not held")
            assert results == []
            proxy.resume()
            late.join(5)
            assert results == [True]

            proxy.pause(refuse=True)
            with (
                contextlib.closing(_client(proxy.port, socket_timeout=2)) as refused,
                pytest.raises(redis.ConnectionError),
            ):
                refused.ping()
            proxy.resume()
            assert before.ping()


def test_free_port_and_wait_until() -> None:
    port = free_port()
    assert 1024 < port < 65536
    assert wait_until(lambda: 42, timeout=1) == 42
    with pytest.raises(AssertionError, match="never true"):
        wait_until(lambda: False, timeout=0.1, interval=0.01, message="never true")
