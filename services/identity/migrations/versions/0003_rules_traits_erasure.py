"""Refused-merge audit, traits, erasures (an outbox) and suppressed identifier digests.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create refusals, traits, erasures, suppressions; persons.erased_at."""
    op.add_column("persons", sa.Column("erased_at", sa.DateTime(timezone=True)), schema="identity")
    op.create_table(
        "refusals",
        sa.Column("refusal_id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(80), nullable=False),
        sa.Column("id_type", sa.String(64), nullable=False),
        sa.Column("id_value", sa.String(512), nullable=False),
        sa.Column("kept", sa.String(36)),
        sa.Column("other", sa.String(36)),
        sa.Column("refused_at", sa.DateTime(timezone=True), nullable=False),
        schema="identity",
    )
    for column in ("kept", "other", "refused_at"):
        op.create_index(f"ix_refusals_{column}", "refusals", [column], schema="identity")
    op.create_table(
        "traits",
        sa.Column("oneid", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("value", JSONB),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        schema="identity",
    )
    op.create_table(
        "erasures",
        sa.Column("erasure_id", sa.String(36), primary_key=True),
        sa.Column("oneid", sa.String(36), nullable=False),
        sa.Column("oneids", ARRAY(sa.String(36)), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        schema="identity",
    )
    op.create_index(
        "ix_erasures_unpublished",
        "erasures",
        ["requested_at"],
        schema="identity",
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_table(
        "suppressions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("erasure_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        schema="identity",
    )


def downgrade() -> None:
    """Drop what upgrade created."""
    for table in ("suppressions", "erasures", "traits", "refusals"):
        op.drop_table(table, schema="identity")
    op.drop_column("persons", "erased_at", schema="identity")
