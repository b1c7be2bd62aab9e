"""The profiles read model in real Postgres: a row is replaced only by a later record of
``tierflow.profiles``, and an erased or merged away person stays gone."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from aiokafka.structs import ConsumerRecord
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scoring.pages import READ_MODEL_DOWN_RETRY_AFTER_S, read
from services.scoring.profiles import store_profiles
from services.scoring.repository import get_profile, tier_counts
from shared.contracts import Profile, Scores, encode
from shared.db import build_engine, build_sessionmaker, unit_of_work
from shared.errors import Unavailable
from shared.settings import CommonSettings
from shared.topics import PROFILES
from tests.factories import T0, free_port


def profile(oneid: str, events: int, stage: str = "new", minutes: int = 0) -> Profile:
    return Profile(
        oneid=oneid,
        tier="growth",
        lifecycle_stage=stage,
        scores=Scores(value=0.0, engagement=events, fit=0.0, total=events),
        events_counted=events,
        model_version="test",
        updated_at=T0 + timedelta(minutes=minutes),
    )


def record(oneid: str, offset: int, value: Profile | None) -> ConsumerRecord[bytes, bytes]:
    """A record of ``tierflow.profiles`` at ``offset``, as the read-model writer gets it."""
    payload = None if value is None else encode(value)
    return ConsumerRecord(PROFILES.name, 0, offset, 0, 0, oneid.encode(), payload, None, 0, 0, [])


async def test_older_records_never_replace_newer_ones_or_bring_back_the_gone(
    engine: AsyncEngine,
) -> None:
    sessions = build_sessionmaker(engine)
    erased, late = f"erased-{uuid.uuid4().hex[:8]}", f"late-{uuid.uuid4().hex[:8]}"

    async def held(oneid: str) -> Profile | None:
        async with unit_of_work(sessions) as session:
            return await get_profile(session, oneid)

    await store_profiles(sessions, [record(erased, 10, profile(erased, 1))])
    assert held_events(await held(erased)) == 1
    await store_profiles(sessions, [record(erased, 12, None)])  # erased
    assert await held(erased) is None
    # the older writer of a rebalance commits after the newer one: its profile is older
    await store_profiles(sessions, [record(erased, 11, profile(erased, 2))])
    assert await held(erased) is None
    # a late event is evaluated at the time of the one before: the same updated_at
    await store_profiles(sessions, [record(late, 21, profile(late, 2))])
    await store_profiles(sessions, [record(late, 20, profile(late, 1))])
    assert held_events(await held(late)) == 2
    await store_profiles(sessions, [record(late, 20, profile(late, 1))])  # redelivered
    assert held_events(await held(late)) == 2
    # offsets restart (a re-created or re-partitioned topic, a fresh embedded broker over a
    # kept database): a later evaluation still replaces the row
    restarted = f"restarted-{uuid.uuid4().hex[:8]}"
    await store_profiles(sessions, [record(restarted, 500, profile(restarted, 3))])
    await store_profiles(sessions, [record(restarted, 0, profile(restarted, 40, minutes=1440))])
    assert held_events(await held(restarted)) == 40
    # in one batch the last record of a person wins
    await store_profiles(sessions, [record(late, 22, profile(late, 3)), record(late, 23, None)])
    assert await held(late) is None
    async with unit_of_work(sessions) as session:
        counts = await tier_counts(session)
    assert None not in counts  # tombstones are nobody


async def test_stage_names_as_long_as_the_model_allows_are_stored(engine: AsyncEngine) -> None:
    sessions = build_sessionmaker(engine)
    oneid = f"long-{uuid.uuid4().hex[:8]}"
    stage = "s" * 64  # the model's limit: 33 characters failed every profile in the stage
    await store_profiles(sessions, [record(oneid, 1, profile(oneid, 1, stage))])
    async with unit_of_work(sessions) as session:
        stored = await get_profile(session, oneid)
    assert stored is not None
    assert stored.lifecycle_stage == stage


def held_events(stored: Profile | None) -> int | None:
    return None if stored is None else stored.events_counted


@pytest.mark.parametrize("where", ["no such database", "nothing listening"])
async def test_a_read_model_out_of_reach_is_unavailable_not_a_500(
    settings: CommonSettings, where: str
) -> None:
    """A refused connection, and asyncpg's refusals at connect ("starting up", "too many
    clients", no such database), which reach SQLAlchemy as plain DBAPIErrors: the pages
    answered both with a bare 500."""
    url = make_url(settings.database_url)
    if where == "no such database":
        url = url.set(database=f"missing_{uuid.uuid4().hex[:8]}")
    else:
        url = url.set(port=free_port())
    unreachable = CommonSettings(database_url=url.render_as_string(hide_password=False))
    engine = build_engine(unreachable, application_name="tierflow-tests")
    try:
        with pytest.raises(Unavailable) as raised:
            async with read(build_sessionmaker(engine)) as session:
                await session.execute(text("select 1"))
    finally:
        await engine.dispose()
    assert raised.value.status_code == 503
    assert raised.value.headers() == {"Retry-After": str(READ_MODEL_DOWN_RETRY_AFTER_S)}
