"""Migrations produce exactly the schema the code declares, and go down and up again."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import create_engine, inspect

from ops.migrate import downgrade, upgrade
from shared.schema import metadata
from tests.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.service


@pytest.fixture
def empty_db(database_url: str) -> Iterator[str]:
    name = f"turnq_mig_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _columns(url: str) -> dict[str, set[str]]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        insp = inspect(engine)
        return {t: {c["name"] for c in insp.get_columns(t)} for t in insp.get_table_names()}
    finally:
        engine.dispose()


def test_upgrade_matches_declared_schema_and_round_trips(empty_db: str) -> None:
    upgrade(empty_db)
    declared = {t.name: {c.name for c in t.columns} for t in metadata.sorted_tables}
    actual = {t: cols for t, cols in _columns(empty_db).items() if t != "alembic_version"}
    assert actual == declared
    downgrade(empty_db, "base")
    assert set(_columns(empty_db)) <= {"alembic_version"}
    upgrade(empty_db)
    assert {t for t in _columns(empty_db) if t != "alembic_version"} == set(declared)
