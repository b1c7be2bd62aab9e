"""The read-model pages' unit of work: Postgres out of reach is a 503 with Retry-After."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from services.scoring.pages import READ_MODEL_DOWN_RETRY_AFTER_S, read
from shared.db import build_engine, build_sessionmaker
from shared.errors import Unavailable
from shared.settings import CommonSettings
from tests.factories import free_port


async def test_a_read_model_out_of_reach_is_unavailable_with_retry_after() -> None:
    url = f"postgresql+asyncpg://tierflow@127.0.0.1:{free_port()}/tierflow"  # nothing listens
    engine = build_engine(CommonSettings(database_url=url), application_name="test")
    try:
        with pytest.raises(Unavailable) as raised:
            async with read(build_sessionmaker(engine)) as session:
                await session.execute(text("select 1"))
    finally:
        await engine.dispose()
    assert raised.value.status_code == 503
    assert raised.value.headers() == {"Retry-After": str(READ_MODEL_DOWN_RETRY_AFTER_S)}
