"""Bring a database to the newest schema: ``turnq migrate`` or ``ops.migrate.upgrade(url)``.

Safe to run from many processes at once (the alembic env takes an advisory lock).

The turn functions (``shared/sql/*.sql``) are code, not schema: after the migrations,
``upgrade`` re-installs them whenever their rendered text differs from what the
database holds (a repeatable migration; ``turnq_sql_checksum()`` says what is there).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, text

from shared import sql

MIGRATION_LOCK = 727_274_001  # pg_advisory_lock key (also taken by migrations/env.py)

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", _sync_url(database_url).replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)
    if revision == "head":
        refresh_functions(database_url)


def refresh_functions(database_url: str) -> bool:
    """Install the current turn functions if the database holds other ones; True if it did."""
    engine = create_engine(_sync_url(database_url), future=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            conn.commit()
            try:
                with conn.begin():
                    if _installed_checksum(conn) == sql.checksum():
                        return False
                    sql.install(lambda statement: conn.exec_driver_sql(statement))
                    return True
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                conn.commit()
    finally:
        engine.dispose()


def _installed_checksum(conn: Connection) -> str | None:
    if conn.execute(text("SELECT to_regprocedure('turnq_sql_checksum()')")).scalar() is None:
        return None
    value = conn.execute(text("SELECT turnq_sql_checksum()")).scalar()
    return str(value) if value is not None else None


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def _sync_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
