"""Alembic, run per service: each service owns one Postgres schema and its migration history."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from shared.settings import CommonSettings

SERVICES_DIR = Path(__file__).resolve().parent.parent / "services"
SCHEMAS = ("ingest", "identity", "scoring", "automation")


def alembic_config(schema: str, database_url: str) -> Config:
    """The Alembic config of one service's migrations folder."""
    config = Config()
    config.set_main_option("script_location", str(SERVICES_DIR / schema / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["schema"] = schema
    return config


def migrate(settings: CommonSettings, revision: str = "head") -> None:
    """Bring every service schema to ``revision`` (blocking: call via a thread from async code)."""
    for schema in SCHEMAS:
        command.upgrade(alembic_config(schema, settings.database_url), revision)


def check(settings: CommonSettings) -> None:
    """Raise if any service's models and migrations disagree (alembic autogenerate diff)."""
    for schema in SCHEMAS:
        command.check(alembic_config(schema, settings.database_url))


def run_env(config: Config, metadata: MetaData) -> None:
    """The body of every service's ``env.py``: online migrations inside its own schema."""
    from alembic import context

    schema: str = config.attributes["schema"]
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None

    def run(connection: Connection) -> None:
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table_schema=schema,
            include_schemas=True,
            include_name=lambda name, type_, _parent: type_ != "schema" or name == schema,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def main() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(run)
        finally:
            await engine.dispose()

    asyncio.run(main())
