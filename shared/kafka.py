"""Kafka plumbing: producers and consumers configured one way, topic creation, publishing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner

from shared.contracts import Contract, encode
from shared.settings import CommonSettings
from shared.topics import ALL_TOPICS, TopicSpec

log = logging.getLogger(__name__)


def build_producer(settings: CommonSettings, **overrides: Any) -> AIOKafkaProducer:
    """A producer that only reports success once all in-sync replicas have the message."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        "enable_idempotence": settings.kafka_idempotence,
        "linger_ms": 2,
        "max_batch_size": 512 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        "request_timeout_ms": 10_000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def build_consumer(
    settings: CommonSettings, *topics: str, group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer that commits only what the caller says it finished (at-least-once)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka_heartbeat_interval_ms,
        "rebalance_timeout_ms": settings.kafka_rebalance_timeout_ms,
        "max_poll_records": 1000,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def create_topics(
    settings: CommonSettings, specs: Iterable[TopicSpec] = ALL_TOPICS
) -> list[str]:
    """Create missing topics from the registry; returns the names it created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name=spec.name,
                num_partitions=spec.partitions or settings.topic_partitions,
                replication_factor=settings.topic_replication,
                topic_configs=dict(spec.configs),
            )
            for spec in specs
            if spec.name not in existing
        ]
        if not wanted:
            return []
        try:
            await admin.create_topics(wanted)
        except TopicAlreadyExistsError:
            log.info("topics created concurrently by another process")
        return [topic.name for topic in wanted]
    finally:
        await admin.close()


async def wait_for_broker(settings: CommonSettings, timeout: float = 30.0) -> None:
    """Block until the broker answers metadata requests, or raise TimeoutError."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"broker {settings.kafka_bootstrap} unreachable") from exc
            await asyncio.sleep(0.3)
        finally:
            await admin.close()


GROUP_FROM = 8
PARTITIONER = DefaultPartitioner()
"""murmur2 of the key over all partitions: the same choice as the Java client's default."""


@lru_cache(maxsize=100_000)
def _partition_of(key: bytes, partitions: tuple[int, ...]) -> int:
    """The default partitioner's choice for a key, memoised: it is pure-Python murmur2, and the
    same OneIDs and user ids are published again and again."""
    chosen: int = PARTITIONER(key, list(partitions), list(partitions))
    return chosen


async def send_grouped(
    producer: AIOKafkaProducer, topic: str, records: Iterable[tuple[bytes | None, bytes]]
) -> list[asyncio.Future[Any]]:
    """Queue keyed records as one batch per partition; returns one ack future per batch.

    Same partitions as ``send()`` per record, without its per-record coroutine and metadata
    checks, which dominate the cost of publishing a large request's events one by one. A few
    records go through ``send()`` instead, so that concurrent small requests share batches.
    """
    records = list(records)
    if len(records) < GROUP_FROM:
        return [await producer.send(topic, value, key=key) for key, value in records]
    partitions = sorted(await producer.partitions_for(topic))
    known = tuple(partitions)
    grouped: dict[int, list[tuple[bytes | None, bytes]]] = {}
    for key, value in records:
        partition = _partition_of(key, known) if key is not None else None
        if partition is None:
            partition = PARTITIONER(key, partitions, partitions)
        grouped.setdefault(partition, []).append((key, value))
    futures: list[asyncio.Future[Any]] = []
    for partition, items in grouped.items():
        batch = producer.create_batch()
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a record of {len(value)} bytes exceeds the batch size")
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


class Publisher:
    """Sends contracts to registry topics; each send returns once the broker acknowledged it."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    @property
    def producer(self) -> AIOKafkaProducer:
        """The underlying producer (for callers that batch their own sends)."""
        return self._producer

    async def publish(self, topic: TopicSpec, key: str, message: Contract) -> None:
        """Send one message and wait for the acknowledgement."""
        await self._producer.send_and_wait(topic.name, encode(message), key=key.encode())

    async def publish_many(self, topic: TopicSpec, items: Iterable[tuple[str, Contract]]) -> None:
        """Send many messages and wait until every one is acknowledged (fails if any fails)."""
        await self.publish_encoded(topic, ((key, encode(message)) for key, message in items))

    async def publish_encoded(self, topic: TopicSpec, items: Iterable[tuple[str, bytes]]) -> None:
        """``publish_many`` for messages already serialised to their contract's JSON."""
        futures = await send_grouped(
            self._producer, topic.name, ((key.encode(), value) for key, value in items)
        )
        if futures:
            await asyncio.gather(*futures)
