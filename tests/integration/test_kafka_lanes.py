"""``BatchLanes`` on the real broker: concurrent callers share batches, yet every record lands
once, in the partition ``send()`` would choose, in the order of the calls; and a topic the
producer has no metadata for fails within the caller's bound instead of aiokafka's."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from shared.kafka import PARTITIONER, BatchLanes, build_producer, create_topics
from shared.settings import CommonSettings
from shared.topics import TopicSpec
from tests.support.services import proxied_broker, reading_from_start

CALLERS = 20
RECORDS_PER_CALL = 50
KEYS = [f"person-{n}".encode() for n in range(7)]


async def _read_all(
    settings: CommonSettings, topic: str, count: int
) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of the first ``count`` records, each partition in its order."""
    async with reading_from_start(settings.kafka_bootstrap, topic) as consumer:
        seen: list[tuple[int, bytes, bytes]] = []
        deadline = time.monotonic() + 30
        while len(seen) < count and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                seen += [(tp.partition, r.key or b"", r.value or b"") for r in records]
        return seen


async def test_concurrent_calls_share_batches_and_keep_each_calls_order(
    settings: CommonSettings,
) -> None:
    topic = f"lanes-{uuid.uuid4().hex[:8]}"
    await create_topics(settings, [TopicSpec(topic, "person", "test", partitions=3)])
    producer = build_producer(settings)
    await producer.start()
    try:
        lanes = BatchLanes(producer, topic, timeout_s=10)

        async def call(caller: int) -> None:
            await lanes.publish(
                (KEYS[n % len(KEYS)], f"{caller}:{n}".encode()) for n in range(RECORDS_PER_CALL)
            )

        await asyncio.gather(*(call(caller) for caller in range(CALLERS)))
    finally:
        await producer.stop()

    records = await _read_all(settings, topic, CALLERS * RECORDS_PER_CALL)
    values = [value for _, _, value in records]
    assert len(values) == len(set(values)) == CALLERS * RECORDS_PER_CALL  # each once
    partitions = [0, 1, 2]
    per_caller: dict[tuple[bytes, int], list[int]] = defaultdict(list)
    for partition, key, value in records:
        assert partition == PARTITIONER(key, partitions, partitions), key
        caller, n = (int(part) for part in value.split(b":"))
        per_caller[key, caller].append(n)
    for numbers in per_caller.values():
        assert numbers == sorted(numbers)  # a caller's records of a key, in its order


async def test_a_topic_without_metadata_fails_within_the_bound(
    settings: CommonSettings, tmp_path: Path
) -> None:
    # a broker the producer reaches only through a proxy, cut before it learns of the topic
    async with proxied_broker(tmp_path) as proxy:
        bootstrap = f"127.0.0.1:{proxy.listen_port}"
        producer = build_producer(settings.model_copy(update={"kafka_bootstrap": bootstrap}))
        await producer.start()
        try:
            await proxy.cut()
            lanes = BatchLanes(producer, f"unknown-{uuid.uuid4().hex[:8]}", timeout_s=1.0)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await lanes.publish([(b"k", b"v")])
            assert time.monotonic() - started < 3.0  # aiokafka's own wait: the 10 s request timeout
        finally:
            await producer.stop()
