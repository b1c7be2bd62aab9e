"""Recovery of a large table from its changelog: ``python -m bench.scoring_recovery``.

Scoring a million people through the worker would take longer than the measurement, so the
changelog is written directly: a worker starts once (Faust declares the changelog topic), then
``--profiles`` records go onto the changelog, each value a real state of the model (people
scored from a few event histories, cloned under distinct keys, encoded by the table's own
codec and partitioned like the table's writes). A fresh worker then recovers them; the time
from process start to ``/readyz`` is reported with records/s, and a sample of people is read
back through ``/explain``. The worker recovers into production's RocksDB store unless ``--store
memory://``. Prints numbers; it is not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer
from faust.serializers import codecs
from prometheus_client.parser import text_string_to_metric_families

from bench.scoring_throughput import KINDS
from services.ingest.envelopes import derive_event_id
from services.scoring.app import people_changelog
from services.scoring.rules import load_model
from services.scoring.scorer import State
from services.scoring.service import score_event
from shared.stack.launcher import Stack, StackSettings, prepare, start_infrastructure
from tests.crash.scoring_worker import Worker, worker_env
from tests.factories import T0, free_port, make_resolved

MODEL = load_model()
HISTORIES = 16  # distinct real states, cloned under the million keys


def real_states(count: int, events: int) -> list[State]:
    """States of ``count`` people, each scored from ``events`` events of mixed kinds (event ids
    as ingest derives them: a long history's state holds the last 256)."""
    rng = random.Random(7)
    states = []
    for person in range(count):
        state: State | None = None
        for n in range(events):
            kind = rng.choice(KINDS)
            at = T0 + timedelta(hours=n * rng.uniform(1, 48))
            message_id = f"h-{person}-{n}"
            event = make_resolved(
                f"h-{person}",
                message_id=message_id,
                event_id=derive_event_id("bench", message_id),
                timestamp=at,
                **kind,
            )
            state, _, _ = score_event(state, event, MODEL)
        assert state is not None
        states.append(state)
    return states


async def write_changelog(
    bootstrap: str, topic: str, prefix: str, states: list[State], n: int
) -> float:
    """``n`` records of people ``{prefix}-{i}``, keyed and partitioned like the table's own;
    returns the mean value size."""
    values = [codecs.dumps("json", state) for state in states]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1 << 20
    )
    await producer.start()
    try:
        pending = []
        for i in range(n):
            key = f"{prefix}-{i}".encode()
            pending.append(await producer.send(topic, values[i % len(values)], key=key))
            if len(pending) >= 50_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sum(len(v) for v in values) / len(values)


async def rebuild(worker: Worker) -> tuple[float, float]:
    """How long the worker's first rebuild of its deadline heap from the recovered table took
    (it starts at the first timer tick after recovery), and the slowest /metrics answer while it
    ran: the rebuild yields to the event loop between slices, so scrapes (and scoring) go on."""
    name = "tierflow_scoring_rebuild_duration_seconds"
    deadline = time.monotonic() + 600
    slowest = 0.0
    async with httpx.AsyncClient(timeout=120) as client:
        while True:
            started = time.perf_counter()
            exposition = (await client.get(f"{worker.url}/metrics")).text
            slowest = max(slowest, time.perf_counter() - started)
            samples = {
                sample.name: sample.value
                for family in text_string_to_metric_families(exposition)
                for sample in family.samples
                if sample.name.startswith(name)
            }
            if samples.get(f"{name}_count", 0) >= 1:
                return samples[f"{name}_sum"], slowest
            if time.monotonic() > deadline:
                raise TimeoutError("the worker never rebuilt its deadline heap")
            await asyncio.sleep(0.2)


async def main() -> None:
    """Write the changelog, recover it in a fresh worker, print the numbers."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events-per-person", type=int, default=12)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--store",
        default="rocksdb://",
        help="the recovering worker's table store: rocksdb:// (production's, the default) or "
        "memory://",
    )
    args = parser.parse_args()
    work_dir = Path(tempfile.mkdtemp(prefix="scoring-recovery-"))
    (work_dir / "logs").mkdir()
    stack = Stack(work_dir=work_dir, env={}, urls={}, owns_work_dir=True)
    settings = StackSettings(stack_broker_port=free_port(), stack_postgres_port=free_port())
    try:
        start_infrastructure(settings, stack)
        await prepare(stack, args.partitions)
        bootstrap = stack.env["TIERFLOW_KAFKA_BOOTSTRAP"]
        prefix = uuid.uuid4().hex[:6]
        app_id = f"scoring-recovery-{prefix}"
        env = worker_env(
            bootstrap,
            stack.env["TIERFLOW_DATABASE_URL"],
            app_id=app_id,
            work_dir=work_dir,
            partitions=args.partitions,
            clock=(T0 - timedelta(days=1)).timestamp(),
            TIERFLOW_SCORING_STORE=args.store,
        )
        first = Worker("declare", env, work_dir)
        await first.ready()
        first.stop()
        states = real_states(HISTORIES, args.events_per_person)
        started = time.perf_counter()
        size = await write_changelog(
            bootstrap, people_changelog(app_id), prefix, states, args.profiles
        )
        print(
            f"changelog: {args.profiles:,} records of ~{size:.0f} bytes written in "
            f"{time.perf_counter() - started:.1f} s"
        )
        started = time.perf_counter()
        worker = Worker("recover", env, work_dir)
        try:
            await worker.ready(timeout=3600)
            seconds = time.perf_counter() - started
            print(
                f"recovery of {args.profiles:,} profiles into {args.store} to ready: "
                f"{seconds:.1f} s = "
                f"{args.profiles / seconds:,.0f} records/s (process start and group join "
                "included)"
            )
            seconds, slowest = await rebuild(worker)
            print(
                f"then the deadline heap's rebuild: {seconds:.1f} s; slowest /metrics answer "
                f"meanwhile: {slowest * 1000:.0f} ms"
            )
            async with httpx.AsyncClient(timeout=30) as client:
                for i in random.sample(range(args.profiles), 5):
                    answer = await client.get(f"{worker.url}/v1/scores/{prefix}-{i}/explain")
                    counted = answer.json()["profile"]["events_counted"]
                    expected = states[i % len(states)]["events"]
                    assert counted == expected, (i, counted, expected)
            print("5 sampled people read back from the recovered table: identical")
        finally:
            worker.stop()
    finally:
        stack.stop()


if __name__ == "__main__":
    asyncio.run(main())
