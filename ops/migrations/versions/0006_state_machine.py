"""One turn state machine: ``waiting``, error codes, vanished-holder accounting, namespaces.

* ``turns.status`` gains ``waiting`` (a turn paused for a human decision); the index of
  open turns (the claim's lookup) covers it, so a paused turn keeps later ones waiting.
* ``turns.error_code``: why a failed turn failed, from a closed set (shared.status).
* ``turns.lost_fences``: fences of executions whose holder vanished (crash, kill, a
  pause past the lock TTL); ``worker_lost`` is decided on these, not on claims
  (docs/decisions/0006).
* ``sessions.namespace``: two deployments (TURNQ_NAMESPACE) may share a database;
  session keys are unique per (namespace, user, key) and every sweep stays in its own.
* The turn functions move out of migrations into ``shared/sql/*.sql``; this migration
  installs them (and ``ops.migrate.upgrade`` re-installs them whenever they change).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

import importlib

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

from shared import sql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

CODES = (
    "model_error", "model_unavailable", "timeout", "guardrail", "max_turns",
    "agent_error", "worker_lost", "state_unreadable",
)  # fmt: skip
OPEN = "status IN ('queued', 'running', 'waiting')"


def upgrade() -> None:
    op.drop_constraint("turns_status_valid", "turns")
    op.create_check_constraint(
        "turns_status_valid",
        "turns",
        "status IN ('queued', 'running', 'waiting', 'succeeded', 'failed', 'cancelled')",
    )
    op.add_column("turns", sa.Column("error_code", sa.Text))
    op.create_check_constraint(
        "turns_error_code_valid", "turns", f"error_code IN ({', '.join(repr(c) for c in CODES)})"
    )
    op.add_column(
        "turns",
        sa.Column(
            "lost_fences", ARRAY(sa.BigInteger), nullable=False, server_default=sa.text("'{}'")
        ),
    )
    op.drop_index("turns_pending", table_name="turns")
    op.create_index("turns_open", "turns", ["session_id", "seq"], postgresql_where=sa.text(OPEN))
    op.add_column(
        "sessions", sa.Column("namespace", sa.Text, nullable=False, server_default=sa.text("''"))
    )
    op.drop_constraint("sessions_user_key", "sessions")
    op.create_unique_constraint("sessions_ns_user_key", "sessions", ["namespace", "user_id", "key"])
    op.drop_index("sessions_user_updated", table_name="sessions")
    op.create_index("sessions_ns_user_updated", "sessions", ["namespace", "user_id", "updated_at"])
    sql.install(op.execute)


def downgrade() -> None:
    sql.drop_all(op.execute)
    op.drop_index("sessions_ns_user_updated", table_name="sessions")
    op.create_index("sessions_user_updated", "sessions", ["user_id", "updated_at"])
    op.drop_constraint("sessions_ns_user_key", "sessions")
    op.create_unique_constraint("sessions_user_key", "sessions", ["user_id", "key"])
    op.drop_column("sessions", "namespace")
    op.drop_index("turns_open", table_name="turns")
    op.create_index(
        "turns_pending",
        "turns",
        ["session_id", "seq"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.drop_column("turns", "lost_fences")
    op.drop_constraint("turns_error_code_valid", "turns")
    op.drop_column("turns", "error_code")
    op.drop_constraint("turns_status_valid", "turns")
    op.create_check_constraint(
        "turns_status_valid",
        "turns",
        "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
    )
    importlib.import_module("ops.migrations.versions.0005_turn_functions").upgrade()
