"""A per-source rate limit (events per second; null means the deployment default).

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
    """Add ``ingest.sources.rate_limit_per_s``."""
    op.add_column(
        "sources", sa.Column("rate_limit_per_s", sa.Integer, nullable=True), schema="ingest"
    )


def downgrade() -> None:
    """Drop ``ingest.sources.rate_limit_per_s``."""
    op.drop_column("sources", "rate_limit_per_s", schema="ingest")
