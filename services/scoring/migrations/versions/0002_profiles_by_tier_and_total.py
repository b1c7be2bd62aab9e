"""Profiles indexed by tier and total, for listing a tier's members highest first.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Replace the tier index with one that also orders by total (its prefix is the old one)."""
    op.create_index(
        "ix_profiles_tier_total",
        "profiles",
        ["tier", sa.text("total DESC"), "oneid"],
        schema="scoring",
    )
    op.drop_index("ix_profiles_tier", "profiles", schema="scoring")


def downgrade() -> None:
    """Back to the tier index alone."""
    op.create_index("ix_profiles_tier", "profiles", ["tier"], schema="scoring")
    op.drop_index("ix_profiles_tier_total", "profiles", schema="scoring")
