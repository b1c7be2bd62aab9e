"""OneIDs of up to 64 characters, as the contracts allow (identity issues 36-character UUIDs).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = "automation"
TABLES = ("actions", "action_log", "erased")


def upgrade() -> None:
    """Widen every ``oneid`` column to 64 characters."""
    for table in TABLES:
        op.alter_column(table, "oneid", type_=sa.String(64), schema=SCHEMA)


def downgrade() -> None:
    """Back to 36 characters (fails if a longer id is stored)."""
    for table in TABLES:
        op.alter_column(table, "oneid", type_=sa.String(36), schema=SCHEMA)
