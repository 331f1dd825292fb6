"""Initial schema: sessions, turns, items (frozen DDL; later changes are new revisions).

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", UUID(as_uuid=False), primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("turn_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("item_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("fence", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("context_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("transcript_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("compaction_mark", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("summary", sa.Text),
        sa.Column("summary_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.UniqueConstraint("user_id", "key", name="sessions_user_key"),
    )
    op.create_index("sessions_user_updated", "sessions", ["user_id", "updated_at"])
    op.create_table(
        "turns",
        sa.Column("id", UUID(as_uuid=False), primary_key=True),
        sa.Column(
            "session_id",
            UUID(as_uuid=False),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="queued"),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("output", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("usage", JSONB),
        sa.Column("context_tokens", sa.Integer),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("fence", sa.BigInteger),
        sa.Column("queued_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("last_kick_at", TS),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name="turns_status_valid",
        ),
        sa.UniqueConstraint("session_id", "seq", name="turns_session_seq"),
        sa.UniqueConstraint("session_id", "idempotency_key", name="turns_session_idempotency"),
    )
    op.create_index(
        "turns_one_running_per_session",
        "turns",
        ["session_id"],
        unique=True,
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index(
        "turns_pending",
        "turns",
        ["session_id", "seq"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_index(
        "turns_pending_age",
        "turns",
        ["queued_at"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_table(
        "items",
        sa.Column(
            "session_id",
            UUID(as_uuid=False),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("turn_id", UUID(as_uuid=False), sa.ForeignKey("turns.id", ondelete="CASCADE")),
        sa.Column("item", JSONB, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("session_id", "position", name="items_pkey"),
    )
    op.create_index("items_turn", "items", ["turn_id"])


def downgrade() -> None:
    op.drop_table("items")
    op.drop_table("turns")
    op.drop_table("sessions")
