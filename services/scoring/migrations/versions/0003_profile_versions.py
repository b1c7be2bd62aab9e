"""Profiles versioned by their offset in tierflow.profiles, tombstones kept as rows, and stage
names as long as tier names.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TOMBSTONE_NULLS = ("total", "profile", "events_counted", "updated_at")


def upgrade() -> None:
    """Rows written before get version 0: any record read from now on replaces them."""
    op.add_column(
        "profiles",
        sa.Column("version", sa.BigInteger(), server_default="0", nullable=False),
        schema="scoring",
    )
    op.alter_column(
        "profiles",
        "lifecycle_stage",
        type_=sa.String(64),
        existing_type=sa.String(32),
        nullable=True,
        schema="scoring",
    )
    for column in TOMBSTONE_NULLS:
        op.alter_column("profiles", column, nullable=True, schema="scoring")


def downgrade() -> None:
    """Tombstones go (a delete was what they stood for); then the old shape."""
    op.execute("DELETE FROM scoring.profiles WHERE profile IS NULL")
    for column in TOMBSTONE_NULLS:
        op.alter_column("profiles", column, nullable=False, schema="scoring")
    op.alter_column(
        "profiles",
        "lifecycle_stage",
        type_=sa.String(32),
        existing_type=sa.String(64),
        nullable=False,
        schema="scoring",
    )
    op.drop_column("profiles", "version", schema="scoring")
