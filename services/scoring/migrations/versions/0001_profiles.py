"""Profiles read model.

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
    """Create ``scoring.profiles``."""
    op.create_table(
        "profiles",
        sa.Column("oneid", sa.String(64), primary_key=True),
        sa.Column("tier", sa.String(64)),
        sa.Column("lifecycle_stage", sa.String(32), nullable=False),
        sa.Column("total", sa.Float, nullable=False),
        sa.Column("profile", JSONB, nullable=False),
        sa.Column("events_counted", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        schema="scoring",
    )
    op.create_index("ix_profiles_tier", "profiles", ["tier"], schema="scoring")


def downgrade() -> None:
    """Drop ``scoring.profiles``."""
    op.drop_table("profiles", schema="scoring")
