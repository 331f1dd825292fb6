"""Compaction: kept summary items, compaction bookkeeping, the compactions log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "sessions",
        sa.Column("summary_items", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    )
    op.add_column("sessions", sa.Column("compacted_at", sa.DateTime(timezone=True)))
    op.add_column(
        "sessions", sa.Column("compaction_count", sa.Integer, nullable=False, server_default="0")
    )
    op.create_table(
        "compactions",
        sa.Column("id", UUID(as_uuid=False), primary_key=True),
        sa.Column(
            "session_id",
            UUID(as_uuid=False),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("strategy", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("old_mark", sa.BigInteger, nullable=False),
        sa.Column("new_mark", sa.BigInteger),
        sa.Column("tokens_before", sa.Integer),
        sa.Column("tokens_after", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "finished_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint(
            "status IN ('succeeded', 'failed', 'noop', 'conflict')", name="compactions_status"
        ),
    )
    op.create_index("compactions_session", "compactions", ["session_id", "finished_at"])


def downgrade() -> None:
    op.drop_index("compactions_session", table_name="compactions")
    op.drop_table("compactions")
    op.drop_column("sessions", "compaction_count")
    op.drop_column("sessions", "compacted_at")
    op.drop_column("sessions", "summary_items")
