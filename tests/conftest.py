"""Test tiers: unit (no services), service (real Redis + Postgres), system (real workers).

Every run gets its own Postgres database and its own Redis namespace on the shared
servers, so runs never see each other's data.  A missing service skips the tiers
that need it locally, and fails them under ``CI=true``.  No test reaches a real
model: the OpenAI key is removed and any non-loopback connection fails.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.tools import missing

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "TURNQ_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TURNQ_TEST_REDIS", "redis://127.0.0.1:6379/0")
RUN_ID = secrets.token_hex(4)
NAMESPACE = f"t{RUN_ID}:"
DB_NAME = f"turnq_test_{RUN_ID}"

# Before anything imports the SDK or settings: no real model, no trace export.
for var in ("OPENAI_API_KEY", "TURNQ_OPENAI_API_KEY", "OPENAI_BASE_URL", "TURNQ_OPENAI_BASE_URL"):
    os.environ.pop(var, None)
os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
os.environ["TURNQ_MODEL_PROVIDER"] = "offline"
os.environ["TURNQ_DATA_DIR"] = str(ROOT / ".turnq-test" / RUN_ID)

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: object) -> object:
    if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        host = str(address[0])
        if not (host.startswith("127.") or host in ("::1", "localhost")):
            raise ConnectionRefusedError(f"tests may not leave this machine (tried {host})")
    return _real_connect(self, address)  # type: ignore[arg-type]


socket.socket.connect = _loopback_only  # type: ignore[method-assign]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        type=float,
        default=None,
        metavar="SECONDS",
        help="tests/chaos: loop each fault at random for SECONDS (same as TURNQ_SOAK_S)",
    )


def pytest_configure(config: pytest.Config) -> None:
    soak = config.getoption("--soak")
    if soak:
        os.environ["TURNQ_SOAK_S"] = str(soak)


def _service_missing(what: str, err: Exception) -> None:
    missing(f"{what} is not reachable ({err}); start it (see .ci/run)")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        _service_missing("Redis at " + REDIS_URL, exc)
    yield REDIS_URL
    for key in client.scan_iter(match=f"{NAMESPACE}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:
        _service_missing("Postgres at " + PG_ADMIN_URL, exc)
    admin.execute(f'CREATE DATABASE "{DB_NAME}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + DB_NAME
    from ops.migrate import upgrade

    upgrade(url)
    yield url
    admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def stack_env(redis_url: str, database_url: str) -> Iterator[dict[str, str]]:
    """Environment for this process and every worker subprocess of the run."""
    env = {
        "TURNQ_REDIS_URL": redis_url,
        "TURNQ_DATABASE_URL": database_url,
        "TURNQ_NAMESPACE": NAMESPACE,
        "TURNQ_ENV": "test",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _clear_settings()
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _clear_settings()


def _clear_settings() -> None:
    from shared.settings import get_settings

    get_settings.cache_clear()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests (marked anyio) run on asyncio, like the workers."""
    return "asyncio"


@pytest.fixture
def uid() -> str:
    """A fresh id for users/sessions so tests sharing the run's database never collide."""
    return secrets.token_hex(4)
