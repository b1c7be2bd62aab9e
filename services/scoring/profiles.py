"""The read model's writer: a poll batch of ``tierflow.profiles`` in one transaction."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scoring import metrics, repository
from shared.consumer import Records
from shared.contracts import Profile, decode
from shared.db import unit_of_work


async def store_profiles(sessions: async_sessionmaker[AsyncSession], records: Records) -> None:
    """Upsert the latest profile of each person in the batch; a tombstone deletes the row."""
    latest: dict[str, bytes | None] = {}
    for record in records:
        if record.key is not None:
            latest[record.key.decode()] = record.value
    profiles = [decode(Profile, value) for value in latest.values() if value is not None]
    gone = [oneid for oneid, value in latest.items() if value is None]
    async with unit_of_work(sessions) as session:
        await repository.upsert_profiles(session, profiles)
        await repository.delete_profiles(session, gone)
    metrics.PROFILES_WRITTEN.labels("upsert").inc(len(profiles))
    metrics.PROFILES_WRITTEN.labels("delete").inc(len(gone))
