"""The broker fact behind the lost update, and the probe that makes recovery read to the end."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.scoring.recovery import true_ends
from shared.settings import CommonSettings
from tests.support.services import proxied_broker


async def test_probe_finds_records_the_reported_end_offset_leaves_out(
    settings: CommonSettings,
) -> None:
    bootstrap = settings.kafka_bootstrap
    topic = await _topic(bootstrap, partitions=2)
    await _write_batches(bootstrap, topic, partition=0, batches=3)  # nothing in partition 1
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    reported = await _reported(bootstrap, tps)
    # Tansu counts the last batch as one record: 21, where 30 records are readable
    assert reported[tps[0]] < 30
    assert await true_ends(bootstrap, reported) == {tps[0]: 30, tps[1]: 0}


async def test_probe_waits_for_a_slow_broker_to_answer(tmp_path: Path) -> None:
    """A fetch answered late is not the end of the partition: with every response 0.5 s late
    the probe must still find all 30 records (the probe that took 300 ms without records for
    the end returned the reported 21)."""
    async with proxied_broker(tmp_path) as proxy:
        bootstrap, tp, reported = await _thirty_records(proxy.listen_port)
        assert reported[tp] < 30
        proxy.slow(0.5)
        assert await true_ends(bootstrap, reported) == {tp: 30}


async def test_probe_fails_rather_than_guess_when_the_broker_does_not_answer(
    tmp_path: Path,
) -> None:
    """A broker that takes connections and answers nothing: the probe raises within its
    patience, naming the partitions, instead of returning the reported end."""
    async with proxied_broker(tmp_path) as proxy:
        bootstrap, tp, reported = await _thirty_records(proxy.listen_port)
        proxy.stall()
        try:
            with pytest.raises(TimeoutError, match=rf"no fetch of {tp.topic}\[0\] within 2 s"):
                await true_ends(bootstrap, reported, patience_s=2.0)
        finally:
            proxy.resume()


async def _thirty_records(
    port: int,
) -> tuple[str, TopicPartition, dict[TopicPartition, int]]:
    """A one-partition topic of 3 batches of 10 records through the broker at ``port``: its
    bootstrap, partition and the end offset the broker reports."""
    bootstrap = f"127.0.0.1:{port}"
    topic = await _topic(bootstrap, partitions=1)
    await _write_batches(bootstrap, topic, partition=0, batches=3)
    tp = TopicPartition(topic, 0)
    return bootstrap, tp, await _reported(bootstrap, [tp])


async def _topic(bootstrap: str, partitions: int) -> str:
    topic = f"scoring-probe-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replication_factor=1)])
    finally:
        await admin.close()
    return topic


async def _write_batches(bootstrap: str, topic: str, partition: int, batches: int) -> None:
    """``batches`` record batches of 10 records each into ``partition``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    try:
        for _ in range(batches):
            sent = [await producer.send(topic, b"v", partition=partition) for _ in range(10)]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def _reported(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The end offsets as the broker reports them (ListOffsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()
