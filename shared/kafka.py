"""Kafka plumbing: producers and consumers configured one way, topic creation, publishing."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code
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
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
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
        response = await admin.create_topics(wanted)
        created, refused = created_or_refused(response.topic_errors)
        if refused:
            raise TopicsRefused("the broker refused: " + "; ".join(refused))
        return created
    finally:
        await admin.close()


class TopicsRefused(RuntimeError):
    """The broker refused to create some topics (replication above the broker count, a bad
    config...): services must not start against topics that do not exist."""


def created_or_refused(topic_errors: Iterable[tuple[Any, ...]]) -> tuple[list[str], list[str]]:
    """The topics a CreateTopics response created, and each refusal as "name: error (message)".

    The admin client does not raise for a topic's error: it is in the response, and ignoring it
    reported success for topics that were never made. A topic another process created meanwhile
    is neither (it exists, as wanted).
    """
    created: list[str] = []
    refused: list[str] = []
    for name, code, *message in topic_errors:
        if code == 0:
            created.append(name)
        elif code == TopicAlreadyExistsError.errno:
            log.info("topic %s created concurrently by another process", name)
        else:
            detail = f" ({message[0]})" if message and message[0] else ""
            refused.append(f"{name}: {for_code(code).__name__}{detail}")
    return created, refused


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
def partition_of(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions`` (numbered from 0) that the default
    partitioner chooses, memoised: it is pure-Python murmur2 (~5 µs for a UUID), and the same
    OneIDs and user ids are published, read and stored again and again."""
    every = list(range(partitions))
    chosen: int = PARTITIONER(key, every, every)
    return chosen


SentBatch = tuple[str, int, int, "asyncio.Future[Any]"]
"""A record batch handed to the producer: topic, partition, record count, ack future (its
result's ``offset`` is the batch's first offset)."""


async def send_batches(
    producer: AIOKafkaProducer, records: Iterable[tuple[str, bytes | None, bytes | None]]
) -> list[SentBatch]:
    """Queue ``(topic, key, value)`` records as record batches, one open batch per topic
    partition, in order within each partition, without waiting for the broker.

    Same partitions as ``send()`` per record, without its per-record coroutine and metadata
    checks, which dominate the cost of publishing many records one by one. A batch always
    takes its first record, however large (the broker refuses one beyond its limit).
    """
    partitions: dict[str, tuple[int, ...]] = {}
    open_batches: dict[tuple[str, int], Any] = {}
    sent: list[SentBatch] = []
    for topic, key, value in records:
        known = partitions.get(topic)
        if known is None:
            known = partitions[topic] = tuple(sorted(await producer.partitions_for(topic)))
        if key is not None:
            partition = known[partition_of(key, len(known))]
        else:
            partition = PARTITIONER(None, list(known), list(known))
        batch = open_batches.get((topic, partition))
        if batch is None:
            batch = open_batches[topic, partition] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # full
            sent.append(await _send_batch(producer, batch, topic, partition))
            batch = open_batches[topic, partition] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)
    for (topic, partition), batch in open_batches.items():
        sent.append(await _send_batch(producer, batch, topic, partition))
    return sent


async def _send_batch(
    producer: AIOKafkaProducer, batch: Any, topic: str, partition: int
) -> SentBatch:
    count = batch.record_count()
    batch.close()  # nothing may join a batch once its records are counted
    return topic, partition, count, await producer.send_batch(batch, topic, partition=partition)


async def send_grouped(
    producer: AIOKafkaProducer, topic: str, records: Iterable[tuple[bytes | None, bytes]]
) -> list[asyncio.Future[Any]]:
    """Queue keyed records of one topic as :func:`send_batches` does; returns one ack future
    per batch. A few records go through ``send()`` instead, so that concurrent small requests
    share batches."""
    records = list(records)
    if len(records) < GROUP_FROM:
        return [await producer.send(topic, value, key=key) for key, value in records]
    batches = await send_batches(producer, ((topic, key, value) for key, value in records))
    return [ack for _, _, _, ack in batches]


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


class _Waiter:
    """One caller of ``BatchLanes.publish``: done when every batch holding its records is."""

    __slots__ = ("future", "pending")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.pending = 0

    def settle(self, error: BaseException | None) -> None:
        if self.future.done():  # timed out, or an earlier batch failed
            return
        if error is not None:
            self.future.set_exception(error)
            return
        self.pending -= 1
        if self.pending == 0:
            self.future.set_result(None)


def _settle_all(waiters: list[_Waiter], ack: asyncio.Future[Any]) -> None:
    error: BaseException | None = (
        KafkaError("the batch was cancelled before its ack") if ack.cancelled() else ack.exception()
    )
    for waiter in waiters:
        waiter.settle(error)


class _Lane:
    """One partition: the batch still open to records, and the sealed ones waiting for aiokafka."""

    __slots__ = ("builder", "partition", "sealed", "task", "waiters")

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.builder: Any = None
        self.waiters: list[_Waiter] = []
        self.sealed: collections.deque[tuple[Any, list[_Waiter]]] = collections.deque()
        self.task: asyncio.Task[None] | None = None

    def seal(self) -> None:
        self.sealed.append((self.builder, self.waiters))
        self.builder = None
        self.waiters = []


class BatchLanes:
    """Publishes keyed records from many concurrent callers through one open batch per partition.

    aiokafka queues one batch per partition and sends one request per broker at a time, so when
    every caller hands in batches of its own, a produce request carries one caller's records and
    throughput is bounded by round trips. Here callers append to a shared open batch per
    partition, which goes to aiokafka as soon as it takes another batch for that partition: while
    one produce request is in flight, the next one fills up with everything that arrived meanwhile.
    Order per partition is the order of ``publish`` calls. No per-record futures or coroutines,
    and no per-call timer: one sweep every ``SWEEP_S`` fails the calls past their deadline.
    """

    SWEEP_S = 0.1
    PARTITIONS_TTL_S = 1.0

    def __init__(self, producer: AIOKafkaProducer, topic: str, *, timeout_s: float) -> None:
        self._producer = producer
        self._topic = topic
        self._timeout_s = timeout_s
        self._lanes: dict[int, _Lane] = {}
        self._known: list[int] = []
        self._known_until = 0.0
        self._partition_of: dict[bytes, int] = {}
        """The default partitioner's choice per key (pure-Python murmur2), for ``_known``."""
        self._deadlines: collections.deque[tuple[float, _Waiter]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None

    async def publish(self, records: Iterable[tuple[bytes | None, bytes]]) -> None:
        """Queue ``records`` and return once Kafka acknowledged every one of them.

        Raises TimeoutError after ``timeout_s`` (the records may still be delivered later, as
        with any producer timeout), or the producer's error for a batch that failed.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self._known_until:
            await self._refresh_partitions(now)
        grouped = self._group(records)
        if not grouped:
            return
        waiter = _Waiter(loop.create_future())
        for partition, items in grouped.items():
            lane = self._lanes.get(partition)
            if lane is None:
                lane = self._lanes[partition] = _Lane(partition)
            self._fill(lane, items, waiter)
            if lane.task is None:
                lane.task = asyncio.create_task(self._flush(lane))
        self._deadlines.append((now + self._timeout_s, waiter))
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.SWEEP_S, self._sweep)
        await waiter.future

    async def _refresh_partitions(self, now: float) -> None:
        """The topic's partitions from the producer's metadata, re-read once a second; a wait
        for metadata the producer lacks is bounded by ``timeout_s`` like the acks (aiokafka's
        own bound is longer)."""
        partitions = self._producer.client.cluster.partitions_for_topic(self._topic)
        if not partitions:
            async with asyncio.timeout(self._timeout_s):
                partitions = await self._producer.partitions_for(self._topic)
        known = sorted(partitions)
        if known != self._known:
            self._known = known
            self._partition_of.clear()
        self._known_until = now + self.PARTITIONS_TTL_S

    def _group(
        self, records: Iterable[tuple[bytes | None, bytes]]
    ) -> dict[int, list[tuple[bytes | None, bytes]]]:
        """Records by partition, chosen as ``send()`` would (murmur2 of the key)."""
        known = self._known
        cache = self._partition_of
        grouped: dict[int, list[tuple[bytes | None, bytes]]] = {}
        for record in records:
            key = record[0]
            partition = cache.get(key) if key is not None else None
            if partition is None:
                partition = PARTITIONER(key, known, known)
                if key is not None:
                    if len(cache) >= 100_000:
                        cache.clear()
                    cache[key] = partition
            if partition in grouped:
                grouped[partition].append(record)
            else:
                grouped[partition] = [record]
        return grouped

    def _fill(self, lane: _Lane, items: list[tuple[bytes | None, bytes]], waiter: _Waiter) -> None:
        """Append to the lane's open batch, sealing it and opening another whenever it is full."""
        builder = lane.builder
        if builder is None:
            builder = lane.builder = self._producer.create_batch()
        if not lane.waiters or lane.waiters[-1] is not waiter:
            lane.waiters.append(waiter)
            waiter.pending += 1
        for key, value in items:
            if builder.append(key=key, value=value, timestamp=None) is None:
                lane.seal()
                builder = lane.builder = self._producer.create_batch()
                lane.waiters.append(waiter)
                waiter.pending += 1
                if builder.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a record of {len(value)} bytes exceeds the batch size")

    async def _flush(self, lane: _Lane) -> None:
        """Hand the lane's batches to aiokafka in order, each as soon as it accepts one."""
        try:
            while lane.sealed or lane.builder is not None:
                if not lane.sealed:
                    lane.seal()
                builder, waiters = lane.sealed.popleft()
                builder.close()  # no linger: the batch already holds all that arrived meanwhile
                try:
                    ack = await self._producer.send_batch(
                        builder, self._topic, partition=lane.partition
                    )
                except Exception as exc:  # KafkaError, ProducerClosed: those callers get it
                    for waiter in waiters:
                        waiter.settle(exc)
                    continue
                ack.add_done_callback(functools.partial(_settle_all, waiters))
        finally:
            lane.task = None

    def _sweep(self) -> None:
        """Fail the calls past their deadline; deadlines are in call order, so stop at the first
        one still pending and in time."""
        now = asyncio.get_running_loop().time()
        deadlines = self._deadlines
        while deadlines and (deadlines[0][1].future.done() or deadlines[0][0] <= now):
            _, waiter = deadlines.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(TimeoutError("Kafka did not acknowledge in time"))
        self._sweeper = (
            asyncio.get_running_loop().call_later(self.SWEEP_S, self._sweep) if deadlines else None
        )
