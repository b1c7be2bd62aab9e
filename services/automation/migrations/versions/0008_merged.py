"""Which OneID each absorbed one was merged into.

Merge notices are keyed by the absorbed id, so automation can apply B→A before X→B: without
this table X's steps then moved to B, a OneID nobody has any more, and were sent under it and
never exited. A merge now moves steps to the end of the chain, and a late tier change of an
absorbed id plans nothing.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SCHEMA = "automation"


def upgrade() -> None:
    """Create the table."""
    op.create_table(
        "merged",
        sa.Column("absorbed", sa.String(64), primary_key=True),
        sa.Column("winner", sa.String(64), nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    """Drop the table."""
    op.drop_table("merged", schema=SCHEMA)
