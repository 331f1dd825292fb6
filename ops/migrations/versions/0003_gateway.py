"""Gateway: API keys (hashed), turn cancellation requests.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text, primary_key=True),  # the public prefix of the key
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("secret_hash", sa.Text, nullable=False),
        sa.Column("name", sa.Text),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_index("api_keys_user", "api_keys", ["user_id"])
    op.add_column("turns", sa.Column("cancel_mode", sa.Text))
    op.add_column("turns", sa.Column("cancel_requested_at", sa.DateTime(timezone=True)))
    op.create_check_constraint(
        "turns_cancel_mode_valid", "turns", "cancel_mode IN ('interrupt', 'rollback')"
    )


def downgrade() -> None:
    op.drop_constraint("turns_cancel_mode_valid", "turns")
    op.drop_column("turns", "cancel_requested_at")
    op.drop_column("turns", "cancel_mode")
    op.drop_index("api_keys_user", table_name="api_keys")
    op.drop_table("api_keys")
