"""Human approvals: a turn pauses for a person, and any worker resumes it.

* ``turns.run_state``: the paused run's ``RunState`` JSON (server-side only, never sent to
  clients); ``turns.pending_items``: what the paused turn produced so far, for the
  transcript's view of it (its pending tool calls marked ``"approval": "pending"``).
* ``approvals``: one row per tool call awaiting a decision -- the call, its tool and
  arguments, the agent, when it was asked, and the decision (approved, rejected, expired,
  cancelled) with who made it and when.  A decision is recorded once (turnq_decide).
* ``api_keys.scopes``: ``approver`` keys may list and decide every user's pending
  approvals of the deployment, and nothing else of theirs.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from shared import sql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("turns", sa.Column("run_state", JSONB))
    op.add_column("turns", sa.Column("pending_items", JSONB))
    op.create_table(
        "approvals",
        sa.Column(
            "turn_id",
            sa.dialects.postgresql.UUID(as_uuid=False),
            sa.ForeignKey("turns.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("call_id", sa.Text, nullable=False),
        sa.Column(
            "session_id",
            sa.dialects.postgresql.UUID(as_uuid=False),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("namespace", sa.Text, nullable=False, server_default=sa.text("''")),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("tool", sa.Text, nullable=False),
        sa.Column("arguments", sa.Text, nullable=False),
        sa.Column("agent", sa.Text),
        sa.Column(
            "requested_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("decision", sa.Text),
        sa.Column("message", sa.Text),
        sa.Column("decided_by", sa.Text),
        sa.Column("decided_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("turn_id", "call_id", name="approvals_pkey"),
        sa.CheckConstraint(
            "decision IN ('approved', 'rejected', 'expired', 'cancelled')",
            name="approvals_decision_valid",
        ),
    )
    op.create_index(
        "approvals_pending",
        "approvals",
        ["namespace", "requested_at"],
        postgresql_where=sa.text("decision IS NULL"),
    )
    op.create_index("approvals_user", "approvals", ["namespace", "user_id", "requested_at"])
    op.add_column(
        "api_keys",
        sa.Column("scopes", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")),
    )
    sql.install(op.execute)


def downgrade() -> None:
    sql.drop_all(op.execute)
    op.drop_column("api_keys", "scopes")
    op.drop_table("approvals")
    op.drop_column("turns", "pending_items")
    op.drop_column("turns", "run_state")
