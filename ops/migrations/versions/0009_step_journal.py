"""Durable steps: each model response and tool outcome of a turn, journaled as it completes.

``turn_steps`` (append-only, written under the turn's fence): ``kind`` ``model`` (``key``:
the call's index in the turn, ``payload``: its output items, usage and response id) or
``tool`` (``key``: the call id; ``state`` ``started`` for non-idempotent tools before they
run, ``done`` with ``payload.output``).  A turn re-run after a crash, or resumed after an
approval, replays them instead of calling again (docs/reliability.md, I14).  Rows of a
finished turn are kept ``TURNQ_JOURNAL_RETENTION_S`` for audit; a rolled-back turn's are
marked ``rolled_back``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

from shared import sql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "turn_steps",
        sa.Column(
            "turn_id",
            UUID(as_uuid=False),
            sa.ForeignKey("turns.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("fence", sa.BigInteger, nullable=False),
        sa.Column("payload", JSONB),
        sa.Column("rolled_back", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("turn_id", "kind", "key", name="turn_steps_pkey"),
        sa.CheckConstraint("kind IN ('model', 'tool')", name="turn_steps_kind_valid"),
        sa.CheckConstraint("state IN ('started', 'done')", name="turn_steps_state_valid"),
    )
    op.create_index("turn_steps_created", "turn_steps", ["created_at"])
    sql.install(op.execute)


def downgrade() -> None:
    sql.drop_all(op.execute)
    op.drop_table("turn_steps")
