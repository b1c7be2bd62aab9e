"""Alembic environment of the ``identity`` schema."""

from alembic import context

from services.identity.models import metadata
from shared.migrations import run_env

run_env(context.config, metadata)
