"""Scoring numbers, measured against its own embedded broker and Postgres in one run:
``python -m bench.scoring_throughput``. Prints numbers; it is not a timed test.

1. the raw ceiling: an aiokafka consumer reading and parsing (orjson) the same events;
2. events/s of one scoring worker (or ``--workers N``) over a backlog, as a ratio to that
   ceiling, with the CPU each process used; the workers' table is production's RocksDB store
   unless ``--store memory://`` (the tests' store) is given;
3. event -> tier-change latency p50/p99 under a paced load;
4. timer lateness: many people's deadlines pass at once (the clock file jumps);
5. recovery time of a fresh worker replaying the table changelog of every profile.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.harness import CpuMeter, box_reference
from services.ingest.envelopes import derive_event_id
from shared.contracts import ResolvedEvent, TierChangeEvent, decode, encode
from shared.stack.launcher import Stack, StackSettings, prepare, start_infrastructure
from shared.topics import EVENTS_RESOLVED, TIERS_CHANGES
from tests.crash.scoring_worker import Worker, produce, read_until, set_clock, worker_env
from tests.factories import T0, free_port, make_resolved

KINDS: list[dict[str, Any]] = [
    {"type": "page", "event": None, "properties": {"path": "/docs", "title": "Docs"}},
    {"event": "Webinar Attended", "properties": {"webinar": "w-2026-11"}},
    {"event": "Email Opened", "properties": {"campaign": "nurture-3"}},
    {"event": "Order Completed", "properties": {"revenue": 120, "currency": "EUR"}},
]


def events(prefix: str, count: int, people: int, start: datetime) -> list[ResolvedEvent]:
    """``count`` events of ~500 bytes over ``people`` people (``people`` seconds apart per
    person), with event ids as ingest derives them (UUIDs: a state remembers the last 256)."""
    return [
        make_resolved(
            f"{prefix}-{n % people}",
            message_id=f"{prefix}-e{n}",
            event_id=derive_event_id("bench", f"{prefix}-e{n}"),
            timestamp=start + timedelta(seconds=n),
            received_at=datetime.now(UTC),
            **KINDS[n % len(KINDS)],
        )
        for n in range(count)
    ]


async def scored(*workers: Worker) -> float:
    """Records the workers have handled so far (their events counters)."""
    return sum([await w.metric("tierflow_scoring_events_total") for w in workers])


async def until_scored(count: float, *workers: Worker, timeout: float = 600) -> None:
    """Wait until the workers handled ``count`` records together."""
    deadline = time.monotonic() + timeout
    while await scored(*workers) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers handled {await scored(*workers)} of {count}")
        await asyncio.sleep(0.1)


async def ceiling(bootstrap: str, count: int) -> float:
    """Raw consumer: read and parse ``count`` records of events.resolved, records/s."""
    consumer = AIOKafkaConsumer(
        EVENTS_RESOLVED.name, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        seen, started = 0, time.perf_counter()
        while seen < count:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for part in batches.values():
                for record in part:
                    orjson.loads(record.value or b"")
                seen += sum(len(part) for part in batches.values())
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def latency(bootstrap: str, worker: Worker, prefix: str, rate: int) -> None:
    """A paced stream where every event is a new person's first (so a tier change)."""
    count = rate * 10
    paced = events(f"{prefix}-lat", count, count, T0)
    done_before = await scored(worker)
    received: dict[str, float] = {}
    # one producer for the whole stream: a producer per chunk would add its start to every
    # event's latency
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for second in range(10):
            tick = time.perf_counter()
            sent = []
            for r in paced[second * rate : (second + 1) * rate]:
                stamped = r.event.model_copy(update={"received_at": datetime.now(UTC)})
                received[r.oneid] = stamped.received_at.timestamp()
                value = encode(r.model_copy(update={"event": stamped}))
                sent.append(await producer.send(EVENTS_RESOLVED.name, value, key=r.oneid.encode()))
            await asyncio.gather(*sent)
            await asyncio.sleep(max(0.0, 1 - (time.perf_counter() - tick)))
    finally:
        await producer.stop()
    await until_scored(done_before + count, worker)
    wanted = f"{prefix}-lat".encode()
    changes = await read_until(
        bootstrap,
        TIERS_CHANGES.name,
        lambda kept: len(kept) >= count,
        keep=lambda r: (r.key or b"").startswith(wanted),
    )
    seconds = [
        r.timestamp / 1000 - received[decode(TierChangeEvent, r.value or b"").subject]
        for r in changes
    ]
    print(
        f"event->tier change at {rate} ev/s: p50 {percentile(seconds, 50) * 1000:.0f} ms, "
        f"p99 {percentile(seconds, 99) * 1000:.0f} ms (n={len(seconds)}; from the stamp "
        "before the test producer's send to the change's broker timestamp)"
    )


async def lateness(bootstrap: str, env: dict[str, str], prefix: str, people: int) -> None:
    """Every person of the backlog becomes due at once: the clock file jumps 40 days."""
    jump = time.time()
    set_clock(env, (T0 + timedelta(days=40)).timestamp())
    changes = await read_until(
        bootstrap,
        TIERS_CHANGES.name,
        lambda kept: len(kept) >= people,
        keep=lambda r: (
            (r.key or b"").startswith(f"{prefix}-".encode()) and b'"timer"' in (r.value or b"")
        ),
        timeout=300,
    )
    late = [r.timestamp / 1000 - jump for r in changes]
    print(
        f"timer: {len(late)} people due at once; lateness p50 {percentile(late, 50):.2f} s, "
        f"p99 {percentile(late, 99):.2f} s, max {max(late):.2f} s"
    )


async def backlog(stack: Stack, running: list[Worker], count: int, raw: float, store: str) -> None:
    """Events/s of the workers over the backlog of ``count`` events, and their CPU per event."""
    meter = CpuMeter(
        {
            **{f"worker-{n}": w.child.process.pid for n, w in enumerate(running)},
            "broker": stack.children[0].process.pid,
            "postgres": stack.children[1].process.pid,
        },
        with_children=("postgres",),
    )
    first, t0 = await scored(*running), time.perf_counter()
    meter.start()
    await until_scored(count, *running)
    meter.stop()
    rate = (count - first) / (time.perf_counter() - t0)
    workers = len(running)
    print(
        f"scoring, {workers} worker(s), {store}: {rate:,.0f} ev/s = {rate / workers:,.0f} per "
        f"worker = {rate / raw:.3f} of the raw consumer ceiling"
    )
    cpu = sum(meter.used[f"worker-{n}"] for n in range(workers))
    print(
        f"  CPU as a share of one core: {meter.shares()}; the workers used "
        f"{cpu / (count - first) * 1e6:.1f} µs per event"
    )


async def main() -> None:
    """Run every measurement and print the numbers."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--paced-rate", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--throughput-only", action="store_true", help="stop after the backlog's events/s"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="workers sharing the backlog (each stands by for the other's partitions); more "
        "than one measures the backlog only",
    )
    parser.add_argument(
        "--store",
        default="rocksdb://",
        help="the workers' table store: rocksdb:// (production's, the default) or memory://",
    )
    args = parser.parse_args()
    print(box_reference(), flush=True)
    work_dir = Path(tempfile.mkdtemp(prefix="scoring-bench-"))
    (work_dir / "logs").mkdir()
    stack = Stack(work_dir=work_dir, env={}, urls={}, owns_work_dir=True)
    settings = StackSettings(stack_broker_port=free_port(), stack_postgres_port=free_port())
    running: list[Worker] = []
    try:
        start_infrastructure(settings, stack)
        await prepare(stack, args.partitions)
        bootstrap = stack.env["TIERFLOW_KAFKA_BOOTSTRAP"]
        prefix = uuid.uuid4().hex[:6]
        payload = [
            (r.oneid.encode(), encode(r)) for r in events(prefix, args.events, args.people, T0)
        ]
        started = time.perf_counter()
        await produce(bootstrap, EVENTS_RESOLVED.name, payload)
        produce_rate = len(payload) / (time.perf_counter() - started)
        raw = await ceiling(bootstrap, len(payload))
        size = statistics.mean(len(v) for _, v in payload)
        print(f"events {len(payload)} of {size:.0f} bytes over {args.people} people")
        print(
            f"producer (acks=all) {produce_rate:,.0f} msg/s; raw consumer+orjson {raw:,.0f} msg/s"
        )
        env = worker_env(
            bootstrap,
            stack.env["TIERFLOW_DATABASE_URL"],
            app_id=f"scoring-bench-{prefix}",
            work_dir=work_dir,
            partitions=args.partitions,
            clock=(T0 - timedelta(days=1)).timestamp(),
            TIERFLOW_SCORING_STORE=args.store,
        )
        running.extend(Worker(f"bench-{n}", env, work_dir) for n in range(args.workers))
        for worker in running:
            await worker.ready()
        await backlog(stack, running, len(payload), raw, args.store)
        if args.throughput_only or args.workers > 1:
            return
        await latency(bootstrap, running[0], prefix, args.paced_rate)
        await lateness(bootstrap, env, prefix, args.people)
        running.pop().stop()
        started = time.perf_counter()
        running.append(Worker("bench-1", env, work_dir))
        await running[0].ready(timeout=900)
        print(
            f"recovery of {args.people + args.paced_rate * 10:,} profiles from the changelog "
            f"to ready: {time.perf_counter() - started:.1f} s (process start and join included)"
        )
    finally:
        for worker in running:
            worker.stop()
        stack.stop()


if __name__ == "__main__":
    asyncio.run(main())
