"""Topic creation against the embedded broker: concurrent creators both succeed."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka.admin import AIOKafkaAdminClient

from shared.kafka import create_topics, created_or_refused
from shared.settings import CommonSettings
from shared.topics import TopicSpec


async def test_two_processes_creating_the_same_topics_both_succeed(
    settings: CommonSettings,
) -> None:
    specs = [TopicSpec(f"test.create.{uuid.uuid4().hex[:8]}.{n}", "k", "a test") for n in range(3)]
    first, second = await asyncio.gather(
        create_topics(settings, specs), create_topics(settings, specs)
    )
    assert sorted({*first, *second}) == sorted(spec.name for spec in specs)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        assert {spec.name for spec in specs} <= set(await admin.list_topics())
    finally:
        await admin.close()
    assert await create_topics(settings, specs) == []  # all exist: nothing to do


def test_a_refused_topic_is_reported_and_an_existing_one_is_not() -> None:
    """What a broker with fewer brokers than the replication factor answers (the admin client
    returns it instead of raising)."""
    errors = [
        ("tierflow.events.raw", 0, None),
        ("tierflow.profiles", 38, "Replication factor: 3 larger than available brokers: 1."),
        ("tierflow.deadletter", 36, "Topic 'tierflow.deadletter' already exists."),
        ("tierflow.tiers.changes", 40, None),
    ]
    created, refused = created_or_refused(errors)
    assert created == ["tierflow.events.raw"]
    assert refused == [
        "tierflow.profiles: InvalidReplicationFactorError (Replication factor: 3 larger than "
        "available brokers: 1.)",
        "tierflow.tiers.changes: InvalidConfigurationError",
    ]
    assert created_or_refused([("t", 0)]) == (["t"], [])  # version 0 carries no message
