"""Alembic environment of the ``automation`` schema."""

from alembic import context

from services.automation.models import metadata
from shared.migrations import run_env

run_env(context.config, metadata)
