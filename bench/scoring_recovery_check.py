"""Does a restarted worker recover every person's latest state from the changelog?

``python -m bench.scoring_recovery_check [--unsafe]``: a worker scores a burst of events (so its
changelog holds multi-record batches), is killed with kill -9, and a new worker recovers; then
every person's recovered state (``/explain``) is compared with the pure model. ``--unsafe`` runs
Faust's own recovery (no end-offset probe) to show what the probe prevents.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.scoring_throughput import events, scored, until_scored
from services.scoring.app import people_changelog
from shared.stack.launcher import Stack, StackSettings, prepare, start_infrastructure
from tests.crash.scenario import produce_events
from tests.crash.scoring_worker import Worker, worker_env
from tests.factories import T0, free_port


async def ends(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, int]]:
    """(reported end offset, records actually readable) per partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        reported = await consumer.end_offsets(tps)
        last = dict.fromkeys(tps, 0)
        while batches := await consumer.getmany(timeout_ms=500, max_records=10_000):
            for tp, records in batches.items():
                last[tp] = records[-1].offset + 1
        return [(reported[tp], last[tp]) for tp in tps]
    finally:
        await consumer.stop()


async def main() -> None:
    """Score a burst, kill, recover, compare."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--unsafe", action="store_true")
    parser.add_argument("--people", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work_dir = Path(tempfile.mkdtemp(prefix="scoring-recovery-"))
    (work_dir / "logs").mkdir()
    stack = Stack(work_dir=work_dir, env={}, urls={}, owns_work_dir=True)
    settings = StackSettings(stack_broker_port=free_port(), stack_postgres_port=free_port())
    module = "bench.scoring_unsafe_worker" if args.unsafe else "services.scoring"
    running: list[Worker] = []
    try:
        start_infrastructure(settings, stack)
        await prepare(stack, 4)
        bootstrap = stack.env["TIERFLOW_KAFKA_BOOTSTRAP"]
        prefix = uuid.uuid4().hex[:6]
        env = worker_env(
            bootstrap,
            stack.env["TIERFLOW_DATABASE_URL"],
            app_id=f"scoring-recovery-{prefix}",
            work_dir=work_dir,
            partitions=4,
            clock=(T0 - timedelta(days=1)).timestamp(),
        )
        expected: dict[str, int] = {}
        total = 0
        for round_ in range(args.rounds):
            worker = Worker(f"r{round_}", env, work_dir, module)
            running.append(worker)
            await worker.ready()
            burst = events(f"{prefix}-{round_}", args.people * 5, args.people, T0)
            for resolved in burst:
                expected[resolved.oneid] = expected.get(resolved.oneid, 0) + 1
            await produce_events(bootstrap, burst)
            total += len(burst)
            await until_scored(await scored(worker) + len(burst) - 1, worker)
            await asyncio.sleep(2)  # the changelog is flushed at the next commit
            worker.kill()
            running.remove(worker)
        changelog = people_changelog(f"scoring-recovery-{prefix}")
        print("changelog partitions (reported end, readable):", await ends(bootstrap, changelog, 4))
        fresh = Worker("final", env, work_dir, module)
        running.append(fresh)
        await fresh.ready()
        stale = 0
        async with httpx.AsyncClient(timeout=5) as client:
            for oneid, count in expected.items():
                body = (await client.get(f"{fresh.url}/v1/scores/{oneid}/explain")).json()
                if body.get("profile", {}).get("events_counted") != count:
                    stale += 1
        mode = "faust recovery (unsafe)" if args.unsafe else "probed recovery"
        print(f"{mode}: {stale} of {len(expected)} people recovered stale ({total} events)")
    finally:
        for worker in running:
            worker.stop()
        stack.stop()


if __name__ == "__main__":
    asyncio.run(main())
