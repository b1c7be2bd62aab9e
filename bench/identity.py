"""Identity resolution throughput with a large graph, as a ratio to the raw consumer ceiling.

Run: ``make bench-identity`` (or ``python -m bench.identity --persons 250000``). Loads
``persons x 4`` identifiers into the graph, puts events for those persons on the raw topic, then
measures in one run: a plain aiokafka consumer reading and parsing them (the ceiling), and one
identity worker (consumer + SERIALIZABLE resolution + publishing) cold (empty identifier cache)
and warm (the same persons again, with the cache filled by the cold pass). Everything runs on
uvloop, as the identity service does.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import random
import time
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime

import asyncpg
import uvloop
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bench.harness import CpuMeter, consumer_ceiling, embedded_infra
from services.identity.rules import load_rules
from services.identity.service import NoticeRelay, Resolver
from services.identity.worker import IdentityHandler, tune_gc
from shared.consumer import BatchConsumer, Records
from shared.contracts import EventEnvelope, encode
from shared.db import build_engine, build_sessionmaker
from shared.kafka import Publisher, build_consumer, build_producer, send_grouped
from shared.settings import CommonSettings
from shared.topics import EVENTS_RAW

NOW = datetime(2026, 11, 23, tzinfo=UTC)
SETTLE_AHEAD = 1
"""As the identity service runs: the next batch is resolved while the last one's outputs are
being acknowledged."""


async def load_graph(database_url: str, persons: int) -> None:
    """``persons`` persons with a userId, an email and two anonymous ids each, by COPY."""
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        await connection.copy_records_to_table(
            "persons",
            schema_name="identity",
            columns=["oneid", "created_at"],
            records=((f"person-{n:08d}", NOW) for n in range(persons)),
        )
        await connection.copy_records_to_table(
            "identifiers",
            schema_name="identity",
            columns=["id_type", "id_value", "oneid", "first_seen_at"],
            records=(
                record
                for n in range(persons)
                for record in (
                    ("user_id", f"user-{n}", f"person-{n:08d}", NOW),
                    ("email", f"user-{n}@acme.io", f"person-{n:08d}", NOW),
                    ("anonymous_id", f"anon-{n}-a", f"person-{n:08d}", NOW),
                    ("anonymous_id", f"anon-{n}-b", f"person-{n:08d}", NOW),
                )
            ),
        )
        await connection.execute("ANALYZE identity.persons; ANALYZE identity.identifiers")
    finally:
        await connection.close()


def events_for(people: list[int], tag: str) -> list[EventEnvelope]:
    """One event per person: a logged-in page view from one of their known browsers."""
    return [
        EventEnvelope(
            event_id=str(uuid.uuid4()),
            message_id=f"{tag}-{i}",
            source_id="bench",
            type="track",
            user_id=f"user-{n}",
            anonymous_id=f"anon-{n}-{'ab'[i % 2]}",
            event="Page Viewed",
            timestamp=NOW,
            received_at=NOW,
        )
        for i, n in enumerate(people)
    ]


async def produce(bootstrap: str, topic: str, events: list[EventEnvelope]) -> None:
    """Put events on the raw topic, keyed as ingest keys them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for start in range(0, len(events), 5000):
            chunk = events[start : start + 5000]
            futures = await send_grouped(
                producer, topic, [(e.routing_id.encode(), encode(e)) for e in chunk]
            )
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def worker_pass(
    settings: CommonSettings,
    resolver: Resolver,
    sessions: async_sessionmaker[AsyncSession],
    expected: int,
    batch: int,
    meter: CpuMeter,
) -> tuple[float, str]:
    """One identity worker (fresh consumer group) over the raw topic until ``expected`` events
    are handled; returns events/s and the CPU split."""
    producer = build_producer(settings)
    await producer.start()
    consumer = build_consumer(settings, EVENTS_RAW.name, group_id=f"bench-{uuid.uuid4().hex[:8]}")
    await consumer.start()
    publisher = Publisher(producer)
    handler = IdentityHandler(resolver, publisher, NoticeRelay(sessions, publisher))
    handled = 0
    done = asyncio.Event()
    started = 0.0

    async def counting(records: Records) -> Awaitable[None]:
        nonlocal handled, started
        if not started:
            started = time.perf_counter()
            meter.start()
        acknowledged = await handler(records)
        handled += len(records)
        if handled >= expected:
            await acknowledged  # the clock stops once the last outputs are acknowledged
            done.set()
            return _nothing()
        return acknowledged

    loop = BatchConsumer(
        consumer, counting, group="bench", max_records=batch, settle_ahead=SETTLE_AHEAD
    )
    task = asyncio.create_task(loop.run())
    await done.wait()
    elapsed = time.perf_counter() - started
    cpu = meter.stop()
    loop.stop()
    await task
    await consumer.stop()
    await producer.stop()
    return handled / elapsed, cpu


async def _nothing() -> None:
    """An acknowledgement already given."""


async def run(persons: int, events: int, batch: int, *, profile: bool = False) -> None:
    """Load the graph, then measure the ceiling and the cold and warm worker passes."""
    async with embedded_infra(partitions=6) as stack:
        bootstrap = stack.env["TIERFLOW_KAFKA_BOOTSTRAP"]
        database_url = stack.env["TIERFLOW_DATABASE_URL"]
        settings = CommonSettings(
            kafka_bootstrap=bootstrap,
            database_url=database_url,
            database_pool_size=4,
            kafka_session_timeout_ms=6000,
            kafka_rebalance_timeout_ms=3000,
        )
        began = time.perf_counter()
        await load_graph(database_url, persons)
        print(
            f"graph: {persons * 4:,} identifiers of {persons:,} persons loaded in "
            f"{time.perf_counter() - began:.0f}s",
            flush=True,
        )
        rng = random.Random(5)
        people = [rng.randrange(persons) for _ in range(events)]
        await produce(bootstrap, EVENTS_RAW.name, events_for(people, "cold"))
        ceiling, read = await consumer_ceiling(bootstrap, EVENTS_RAW.name, events)
        print(f"raw consumer ceiling: {ceiling:,.0f} msg/s ({read:,} messages)", flush=True)

        postgres = next(c for c in stack.children if c.name == "postgres")
        meter = CpuMeter(
            {"worker": os.getpid(), "postgres": postgres.process.pid}, with_children=("postgres",)
        )
        engine = build_engine(settings, application_name="bench-identity")
        resolver = Resolver(engine, load_rules())
        sessions = build_sessionmaker(engine)  # the outbox relay's, as in the service
        tune_gc()  # as the identity service does once started
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        cold, cold_cpu = await worker_pass(settings, resolver, sessions, events, batch, meter)
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        print(f"cold: {cold:,.0f} events/s ({cold_cpu})", flush=True)
        await produce(bootstrap, EVENTS_RAW.name, events_for(people, "warm"))
        warm, warm_cpu = await worker_pass(settings, resolver, sessions, 2 * events, batch, meter)
        await resolver.close()
        await engine.dispose()
        # the warm pass re-reads the cold events too (a new group): they are duplicates by
        # event id and cost a sighting lookup each, so its rate is over both halves
        print(f"warm: {warm:,.0f} events/s ({warm_cpu})", flush=True)

    print()
    print("| measure | events/s | ratio to ceiling |")
    print("| --- | --- | --- |")
    print(f"| raw consumer ceiling (aiokafka + orjson) | {ceiling:,.0f} | 1.00 |")
    print(f"| identity worker, cold cache | {cold:,.0f} | {cold / ceiling:.2f} |")
    print(f"| identity worker, warm cache | {warm:,.0f} | {warm / ceiling:.2f} |")


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--persons", type=int, default=250_000, help="x4 identifiers")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500, help="records per poll batch")
    parser.add_argument("--profile", action="store_true", help="cProfile the cold pass")
    args = parser.parse_args()
    # the identity service runs on uvloop (shared.serve); so do the worker and the ceiling here
    uvloop.run(run(args.persons, args.events, args.batch, profile=args.profile))


if __name__ == "__main__":
    main()
