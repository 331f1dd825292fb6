"""Initial schema: sessions, turns, items.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op

from shared.schema import items, sessions, turns

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    for table in (sessions, turns, items):
        table.create(bind)


def downgrade() -> None:
    bind = op.get_bind()
    for table in (items, turns, sessions):
        table.drop(bind)
