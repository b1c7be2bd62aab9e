"""Alembic environment of the ``ingest`` schema."""

from alembic import context

from services.ingest.models import metadata
from shared.migrations import run_env

run_env(context.config, metadata)
