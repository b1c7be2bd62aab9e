"""Touch actions.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``automation.actions``."""
    op.create_table(
        "actions",
        sa.Column("action_id", sa.String(36), primary_key=True),
        sa.Column("oneid", sa.String(36), nullable=False),
        sa.Column("tier_change_id", sa.String(64), nullable=False),
        sa.Column("playbook", sa.String(64), nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema="automation",
    )
    op.create_index("ix_actions_oneid", "actions", ["oneid", "created_at"], schema="automation")


def downgrade() -> None:
    """Drop ``automation.actions``."""
    op.drop_table("actions", schema="automation")
