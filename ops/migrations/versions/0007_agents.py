"""Agents as written: entry and active agent per session, run context, structured I/O, usage.

* ``sessions.entry_agent``: the agent a session was created with (TURNQ_AGENT may name
  several); ``sessions.active_agent``: the agent that answered last (after handoffs),
  where the next turn starts.
* ``sessions.{requests, input_tokens, cached_tokens, output_tokens, reasoning_tokens}``:
  the session's model usage, summed by each turn's commit (per user: a sum over these).
* ``turns.agent``: who answered; ``turns.metadata``: the caller's JSON object, given to
  tools through the run context; ``turns.content``: the message as content parts (NULL:
  ``input`` is the plain text); ``turns.output_json``: a structured final output.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from shared import sql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

USAGE = ("requests", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")


def upgrade() -> None:
    op.add_column("sessions", sa.Column("entry_agent", sa.Text))
    op.add_column("sessions", sa.Column("active_agent", sa.Text))
    for name in USAGE:
        op.add_column(
            "sessions", sa.Column(name, sa.BigInteger, nullable=False, server_default="0")
        )
    op.add_column("turns", sa.Column("agent", sa.Text))
    op.add_column("turns", sa.Column("metadata", JSONB))
    op.add_column("turns", sa.Column("content", JSONB))
    op.add_column("turns", sa.Column("output_json", JSONB))
    sql.install(op.execute)


def downgrade() -> None:
    sql.drop_all(op.execute)  # 0006's downgrade puts 0005's functions back
    for name in ("output_json", "content", "metadata", "agent"):
        op.drop_column("turns", name)
    for name in (*USAGE, "active_agent", "entry_agent"):
        op.drop_column("sessions", name)
