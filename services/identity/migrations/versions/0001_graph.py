"""Identity graph: persons, identifiers, merges.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the identity graph tables."""
    op.create_table(
        "persons",
        sa.Column("oneid", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("merged_into", sa.String(36), sa.ForeignKey("identity.persons.oneid")),
        sa.Column("merged_at", sa.DateTime(timezone=True)),
        schema="identity",
    )
    op.create_index("ix_persons_merged_into", "persons", ["merged_into"], schema="identity")
    op.create_table(
        "identifiers",
        sa.Column("id_type", sa.String(64), primary_key=True),
        sa.Column("id_value", sa.String(512), primary_key=True),
        sa.Column("oneid", sa.String(36), sa.ForeignKey("identity.persons.oneid"), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        schema="identity",
    )
    op.create_index("ix_identifiers_oneid", "identifiers", ["oneid"], schema="identity")
    op.create_table(
        "merges",
        sa.Column("merge_id", sa.String(36), primary_key=True),
        sa.Column("winner", sa.String(36), sa.ForeignKey("identity.persons.oneid"), nullable=False),
        sa.Column(
            "absorbed", sa.String(36), sa.ForeignKey("identity.persons.oneid"), nullable=False
        ),
        sa.Column("cause_event_id", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column(
            "merged_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        schema="identity",
    )
    op.create_index(
        "ix_merges_unpublished",
        "merges",
        ["merged_at"],
        schema="identity",
        postgresql_where=sa.text("published_at IS NULL"),
    )


def downgrade() -> None:
    """Drop the identity graph."""
    op.drop_table("merges", schema="identity")
    op.drop_table("identifiers", schema="identity")
    op.drop_table("persons", schema="identity")
