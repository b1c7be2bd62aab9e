"""The read model's writer: a poll batch of ``tierflow.profiles`` in one transaction; a profile
it cannot store goes to the dead-letter topic alone instead of stopping the writer."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scoring import metrics, repository
from services.scoring.settings import ScoringSettings
from shared.consumer import BatchConsumer, Records
from shared.contracts import Profile, decode
from shared.db import build_engine, build_sessionmaker, unit_of_work
from shared.deadletters import dead_letter_sink
from shared.kafka import Publisher, build_consumer, build_producer
from shared.topics import PROFILES


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


async def run_read_model(settings: ScoringSettings) -> None:
    """Consume ``tierflow.profiles`` into the read model until cancelled."""
    engine = build_engine(settings, application_name="tierflow-scoring")
    sessions = build_sessionmaker(engine)
    group = settings.scoring_profiles_group
    consumer = build_consumer(settings, PROFILES.name, group_id=group)
    producer = build_producer(settings)  # for dead letters only

    async def handle(records: Records) -> None:
        await store_profiles(sessions, records)

    try:  # a stop may come while they start: stopping is safe in any state
        await producer.start()
        await consumer.start()
        poison = dead_letter_sink(Publisher(producer), "scoring")
        await BatchConsumer(consumer, handle, group=group, poison=poison).run()
    finally:
        await consumer.stop()
        await producer.stop()
        await engine.dispose()
