"""Indexes for reading the merge audit by person and by time, and refusals by identifier value.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_merges_winner", "merges", "winner"),
    ("ix_merges_absorbed", "merges", "absorbed"),
    ("ix_merges_merged_at", "merges", "merged_at"),
    ("ix_refusals_id_value", "refusals", "id_value"),
)


def upgrade() -> None:
    """Index what profiles, the merge list and erasure filter on: without them each scans a
    never-pruned audit table."""
    for name, table, column in INDEXES:
        op.create_index(name, table, [column], schema="identity")


def downgrade() -> None:
    """Drop what upgrade created."""
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table, schema="identity")
