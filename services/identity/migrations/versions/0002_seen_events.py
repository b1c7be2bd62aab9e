"""First sightings of event ids, for deduplicating re-sent events.

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
    """Create ``identity.seen_events``."""
    op.create_table(
        "seen_events",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("raw_partition", sa.Integer, nullable=False),
        sa.Column("raw_offset", sa.BigInteger, nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        schema="identity",
    )
    op.create_index("ix_seen_events_seen_at", "seen_events", ["seen_at"], schema="identity")


def downgrade() -> None:
    """Drop ``identity.seen_events``."""
    op.drop_table("seen_events", schema="identity")
