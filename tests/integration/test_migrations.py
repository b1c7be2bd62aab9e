"""Migrations run on a real Postgres and agree with the models."""

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.migrations import check, migrate
from shared.settings import CommonSettings


async def test_models_and_migrations_agree(settings: CommonSettings) -> None:
    await asyncio.to_thread(check, settings)


async def test_migrate_is_idempotent_and_schemas_are_separate(
    settings: CommonSettings, engine: AsyncEngine
) -> None:
    await asyncio.to_thread(migrate, settings)
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE "
                "table_schema IN ('ingest', 'identity', 'scoring', 'automation') ORDER BY 1, 2"
            )
        )
        tables = {(schema, name) for schema, name in rows}
    assert {
        ("ingest", "sources"),
        ("identity", "persons"),
        ("identity", "identifiers"),
        ("identity", "merges"),
        ("identity", "traits"),
        ("identity", "refusals"),
        ("scoring", "profiles"),
        ("automation", "actions"),
    } <= tables
