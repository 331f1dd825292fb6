"""Session retention: index sessions by last activity.

The retention job (``shared/retention.py``) looks for the least recently active
sessions across all users; the existing (user_id, updated_at) index cannot serve
that range, so every run would scan the table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("sessions_updated", "sessions", ["updated_at"])


def downgrade() -> None:
    op.drop_index("sessions_updated", table_name="sessions")
