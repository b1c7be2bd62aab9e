"""Each person's contact preferences from their latest profile.

Profiles and tier changes are read by two consumer groups, each at its own pace: a refusal read
from a profile before the tier change that plans steps found no steps to guard, and the steps
planned afterwards went out. The stored contact guards them when they are planned.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SCHEMA = "automation"


def upgrade() -> None:
    """Create the table."""
    op.create_table(
        "contacts",
        sa.Column("oneid", sa.String(64), primary_key=True),
        sa.Column("optouts", postgresql.JSONB(), nullable=False),
        sa.Column("timezone", sa.String(64)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    """Drop the table."""
    op.drop_table("contacts", schema=SCHEMA)
