"""Crash tests get their own embedded broker and Postgres (the integration fixtures, reused)."""

from tests.integration.conftest import infra, settings

__all__ = ["infra", "settings"]
