"""An index of the steps the exit rule can still stop: scheduled, unsent, held in a tier.

The exit rule joins a batch's moved people to their pending steps. Its only other way in is
``ix_actions_due`` by status, and with statistics older than a burst of changes (autovacuum had not
analyzed the table yet) Postgres ran that join as a nested loop over every scheduled row: after a
10,000-change flood each batch's exit statement took 400 to 730 ms, and the batch's new actions
became visible to the dispatcher only when it committed (tier change to webhook p50 ~760 ms
instead of ~200). The same statement on the same table with this index: 14 ms.

Revision ID: 0004
Revises: 0003
"""

from alembic import op
from sqlalchemy import text

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCHEMA = "automation"


def upgrade() -> None:
    """Index pending held steps by person."""
    op.create_index(
        "ix_actions_pending",
        "actions",
        ["oneid"],
        schema=SCHEMA,
        postgresql_where=text("status = 'scheduled' AND sent_at IS NULL AND hold_tier IS NOT NULL"),
    )


def downgrade() -> None:
    """Drop the index."""
    op.drop_index("ix_actions_pending", table_name="actions", schema=SCHEMA)
