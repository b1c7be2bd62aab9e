"""A real broker and a real Postgres, started once per session by the project itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import build_engine
from shared.settings import CommonSettings
from shared.stack.launcher import Stack, StackSettings, prepare, start_infrastructure
from tests.factories import free_port


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Embedded Tansu + embedded Postgres on free ports, stopped at the end of the session."""
    work_dir = tmp_path_factory.mktemp("infra")
    (work_dir / "logs").mkdir()
    settings = StackSettings(stack_broker_port=free_port(), stack_postgres_port=free_port())
    stack = Stack(work_dir=work_dir, env={}, urls={}, owns_work_dir=False)
    try:
        start_infrastructure(settings, stack)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
async def settings(infra: Stack) -> CommonSettings:
    """Settings pointing at the session's broker and Postgres, migrated and with topics."""
    await prepare(infra, partitions=4)
    return CommonSettings(
        kafka_bootstrap=infra.env["TIERFLOW_KAFKA_BOOTSTRAP"],
        database_url=infra.env["TIERFLOW_DATABASE_URL"],
        topic_partitions=4,
        kafka_session_timeout_ms=6000,
        kafka_rebalance_timeout_ms=3000,
    )


@pytest.fixture
async def engine(settings: CommonSettings) -> AsyncIterator[AsyncEngine]:
    """An engine for one test."""
    built = build_engine(settings, application_name="tierflow-tests")
    yield built
    await built.dispose()
