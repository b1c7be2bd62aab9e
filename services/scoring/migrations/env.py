"""Alembic environment of the ``scoring`` schema."""

from alembic import context

from services.scoring.models import metadata
from shared.migrations import run_env

run_env(context.config, metadata)
