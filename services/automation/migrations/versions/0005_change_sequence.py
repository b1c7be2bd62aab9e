"""The person's change sequence on each action, for the exit rule's order.

Two changes of one person can share a time: an event dated before an inactivity drop, scored
after it, moves the person back at the drop's time. Compared by time alone, the move back did
not exit the win-back steps the drop had planned. Rows written before this revision get 0.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SCHEMA = "automation"


def upgrade() -> None:
    """Add the column."""
    op.add_column(
        "actions",
        sa.Column("change_sequence", sa.Integer(), server_default=sa.text("0"), nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    """Drop the column."""
    op.drop_column("actions", "change_sequence", schema=SCHEMA)
