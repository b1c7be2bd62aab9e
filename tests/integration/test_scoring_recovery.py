"""The broker fact behind the lost update, and the probe that makes recovery read to the end."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.scoring.recovery import true_ends
from shared.settings import CommonSettings


async def test_probe_finds_records_the_reported_end_offset_leaves_out(
    settings: CommonSettings,
) -> None:
    topic = f"scoring-probe-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=50)
    await producer.start()
    try:
        for _ in range(3):  # three batches of 10 records into partition 0, nothing in 1
            sent = [await producer.send(topic, b"v", key=b"k", partition=0) for _ in range(10)]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        reported = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    # Tansu counts the last batch as one record: 21, where 30 records are readable
    assert reported[tps[0]] < 30
    assert await true_ends(settings.kafka_bootstrap, dict(reported)) == {tps[0]: 30, tps[1]: 0}
