"""Alembic environment: runs migrations on the URL ops.migrate passes in, one migrator at a time."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from ops.migrate import MIGRATION_LOCK  # parallel `turnq migrate` runs wait, not race
from shared.schema import metadata


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    engine = create_engine(url, future=True)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        connection.commit()
        try:
            context.configure(connection=connection, target_metadata=metadata)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
            connection.commit()
    engine.dispose()


run_migrations_online()
