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
    """Store the latest profile of each person in the batch, or its tombstone, versioned by
    the record's offset (:func:`repository.store_versions`)."""
    latest: dict[str, tuple[int, bytes | None]] = {}
    for record in records:
        if record.key is not None:
            latest[record.key.decode()] = (record.offset + 1, record.value)
    versions = [
        (oneid, version, None if value is None else decode(Profile, value))
        for oneid, (version, value) in latest.items()
    ]
    async with unit_of_work(sessions) as session:
        await repository.store_versions(session, versions)
    gone = sum(profile is None for _, _, profile in versions)
    metrics.PROFILES_WRITTEN.labels("upsert").inc(len(versions) - gone)
    metrics.PROFILES_WRITTEN.labels("delete").inc(gone)


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
