"""Durable schedules, the action log (outbox) and erased persons.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "automation"


def upgrade() -> None:
    """Add schedule columns to actions; create ``action_log`` and ``erased``."""
    op.add_column("actions", sa.Column("due_at", sa.DateTime(timezone=True)), schema=SCHEMA)
    op.add_column("actions", sa.Column("lease_until", sa.DateTime(timezone=True)), schema=SCHEMA)
    op.add_column("actions", sa.Column("sent_at", sa.DateTime(timezone=True)), schema=SCHEMA)
    op.add_column("actions", sa.Column("changed_at", sa.DateTime(timezone=True)), schema=SCHEMA)
    op.add_column("actions", sa.Column("hold_tier", sa.String(64)), schema=SCHEMA)
    op.add_column("actions", sa.Column("person", JSONB), schema=SCHEMA)
    op.execute(
        "UPDATE automation.actions SET due_at = created_at, changed_at = created_at, "
        "person = '{}'::jsonb, status = CASE status WHEN 'requested' THEN 'scheduled' "
        "WHEN 'delivering' THEN 'scheduled' ELSE status END"
    )
    for column in ("due_at", "changed_at", "person"):
        op.alter_column("actions", column, nullable=False, schema=SCHEMA)
    op.create_index("ix_actions_due", "actions", ["status", "due_at"], schema=SCHEMA)
    op.create_index("ix_actions_sends", "actions", ["oneid", "channel", "sent_at"], schema=SCHEMA)
    op.create_table(
        "action_log",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("action_id", sa.String(36), nullable=False),
        sa.Column("oneid", sa.String(36), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("record", JSONB, nullable=False),
        sa.Column("published", sa.Boolean, nullable=False),
        schema=SCHEMA,
    )
    op.create_index("ix_action_log_action", "action_log", ["action_id"], schema=SCHEMA)
    op.create_index("ix_action_log_oneid", "action_log", ["oneid"], schema=SCHEMA)
    op.create_index("ix_action_log_published", "action_log", ["published", "id"], schema=SCHEMA)
    op.create_table(
        "erased",
        sa.Column("oneid", sa.String(36), primary_key=True),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    """Back to plain actions."""
    op.drop_table("erased", schema=SCHEMA)
    op.drop_table("action_log", schema=SCHEMA)
    op.drop_index("ix_actions_sends", "actions", schema=SCHEMA)
    op.drop_index("ix_actions_due", "actions", schema=SCHEMA)
    for column in ("person", "hold_tier", "changed_at", "sent_at", "lease_until", "due_at"):
        op.drop_column("actions", column, schema=SCHEMA)
