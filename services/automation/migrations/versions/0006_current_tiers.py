"""Each person's tier as of their latest change seen.

A merge moved the absorbed person's steps held in a tier (a win-back held in at_risk) to a winner
in another tier, and they were sent to an active customer: nothing knew the winner's tier. The
table also lets the dispatcher exit a due step whose person has left its tier before the
tier-change consumer applied the exit rule.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SCHEMA = "automation"


def upgrade() -> None:
    """Create the table."""
    op.create_table(
        "tiers",
        sa.Column("oneid", sa.String(64), primary_key=True),
        sa.Column("tier", sa.String(64), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("change_sequence", sa.Integer(), nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    """Drop the table."""
    op.drop_table("tiers", schema=SCHEMA)
