"""The batch consumer against a real broker and a real Postgres: a record Postgres refuses goes
to the dead-letter alone and the partition moves on; an outage is waited out, never
dead-lettered."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from sqlalchemy.engine import make_url

from shared.consumer import BatchConsumer, Records
from shared.deadletters import dead_letter_sink
from shared.kafka import Publisher, build_consumer, build_producer, create_topics
from shared.settings import CommonSettings
from shared.topics import DEADLETTER, TopicSpec
from tests.factories import free_port
from tests.support.services import collect
from tests.support.tcp_proxy import TcpProxy


@dataclass
class Probe:
    """A handler that writes each batch's values in one transaction to a table that refuses
    the value ``bad``; it connects through ``dsn`` for every batch, as a pool would after an
    outage."""

    dsn: str
    table: str
    failures: int = 0
    calls: list[int] = field(default_factory=list)

    async def __call__(self, records: Records) -> None:
        self.calls.append(len(records))
        try:
            connection = await asyncpg.connect(self.dsn, timeout=2)
            try:
                await connection.execute(
                    f"INSERT INTO {self.table} (value) SELECT unnest($1::text[]) "
                    "ON CONFLICT DO NOTHING",
                    [(r.value or b"").decode() for r in records],
                )
            finally:
                await connection.close()
        except Exception:
            self.failures += 1
            raise


@dataclass
class Bench:
    settings: CommonSettings
    producer: AIOKafkaProducer
    dsn: str
    host: str
    port: int


@pytest.fixture
async def bench(settings: CommonSettings) -> AsyncIterator[Bench]:
    url = make_url(settings.database_url)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    producer = build_producer(settings)
    await producer.start()
    yield Bench(settings, producer, dsn, url.host or "127.0.0.1", url.port or 5432)
    await producer.stop()


async def fresh(bench: Bench, *values: str) -> tuple[str, str]:
    """A new one-partition topic holding ``values`` in order, and a probe table for it."""
    name = f"tierflow.test.poison.{uuid.uuid4().hex[:8]}"
    await create_topics(bench.settings, [TopicSpec(name, "value", "a test topic", partitions=1)])
    table = f"probe_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(bench.dsn)
    try:
        await connection.execute(
            f"CREATE TABLE {table} (value text PRIMARY KEY CHECK (value <> 'bad'))"
        )
    finally:
        await connection.close()
    for value in values:
        await bench.producer.send(name, value.encode(), key=value.encode())
    await bench.producer.flush()
    return name, table


async def stored(bench: Bench, table: str) -> list[str]:
    connection = await asyncpg.connect(bench.dsn)
    try:
        return [r[0] for r in await connection.fetch(f"SELECT value FROM {table} ORDER BY 1")]
    finally:
        await connection.close()


async def until(check: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await _value(check()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def _value(result: object) -> object:
    return await result if inspect.isawaitable(result) else result


async def run_until(loop: BatchConsumer, done: Callable[[], object], what: str) -> None:
    task = asyncio.create_task(loop.run())
    try:
        await until(done, what)
    finally:
        loop.stop()
        await asyncio.wait_for(task, 15)


async def test_a_record_postgres_refuses_is_dead_lettered_alone(bench: Bench) -> None:
    values = [f"v{i:02d}" for i in range(12)]
    values[5] = "bad"
    topic, table = await fresh(bench, *values)
    consumer = build_consumer(bench.settings, topic, group_id=f"g-{topic}")
    await consumer.start()
    probe = Probe(bench.dsn, table)
    sink = dead_letter_sink(Publisher(bench.producer), "test")
    loop = BatchConsumer(consumer, probe, group=topic, poison=sink, poison_after=3)
    try:

        async def all_good_stored() -> bool:
            return len(await stored(bench, table)) == 11

        await run_until(loop, all_good_stored, "every good record")
        committed = await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()
    assert await stored(bench, table) == sorted(v for v in values if v != "bad")
    assert committed == 12
    assert probe.failures >= 3  # three strikes on the whole batch, then one record alone
    letters = await collect(
        bench.settings.kafka_bootstrap,
        DEADLETTER.name,
        lambda r: (r.get("origin") or {}).get("topic") == topic,
        count=1,
        timeout=20,
    )
    assert len(letters) == 1
    (letter,) = letters
    assert (letter["stage"], letter["key"], letter["payload"]) == ("test", "bad", "bad")
    assert letter["origin"]["offset"] == 5
    assert "check constraint" in letter["reason"]


async def test_an_outage_is_waited_out_and_nothing_is_dead_lettered(bench: Bench) -> None:
    values = [f"w{i:02d}" for i in range(10)]
    topic, table = await fresh(bench, *values)
    proxy = TcpProxy(free_port(), bench.port, host=bench.host)
    dsn = bench.dsn.replace(f":{bench.port}/", f":{proxy.listen_port}/")
    consumer = build_consumer(bench.settings, topic, group_id=f"g-{topic}")
    await consumer.start()
    probe = Probe(dsn, table)
    poisoned: list[ConsumerRecord[bytes, bytes]] = []

    async def sink(record: ConsumerRecord[bytes, bytes], error: Exception) -> None:
        poisoned.append(record)

    loop = BatchConsumer(consumer, probe, group=topic, poison=sink, poison_after=2)
    task = asyncio.create_task(loop.run())
    try:
        await until(lambda: probe.failures >= 4, "four failed attempts while Postgres is away")
        assert await stored(bench, table) == []
        await proxy.start()

        async def all_stored() -> bool:
            return len(await stored(bench, table)) == 10

        await until(all_stored, "every record after the outage")
    finally:
        loop.stop()
        await asyncio.wait_for(task, 15)
        await proxy.cut()
        await consumer.stop()
    assert poisoned == []
    assert await stored(bench, table) == values
