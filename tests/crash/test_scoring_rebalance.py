"""A rebalance before any offset was committed: what a worker scored but had not flushed is
scored again, not skipped.

At a rebalance the scoring loop forgets its unflushed batches and Faust drops what it fetched
while its flow was stopped, both trusting the seek back to the committed offsets to fetch those
messages again. aiokafka seeks only partitions with a committed offset above 0, so without
``FeedConsumer``'s seek to the beginning a partition nobody had committed yet lost them: the
restart-at-once crash test's lost updates, here made certain instead of likely.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.scoring.scorer import State
from shared.settings import CommonSettings
from shared.topics import EVENTS_RESOLVED
from tests.crash.scenario import (
    Replayed,
    changelog_states,
    divergence,
    mismatched,
    produce_events,
    replay,
    stale_people,
)
from tests.crash.scoring_worker import Worker

FLUSH_INTERVAL = 30.0  # no flush, so no ack and no commit, between the first batch and the join


async def test_rebalance_before_any_commit_rescores_the_unflushed_batches(
    settings: CommonSettings, tmp_path: Path, fresh_app: Callable[..., Replayed]
) -> None:
    bootstrap = settings.kafka_bootstrap
    setup = fresh_app(
        "scoring-rebalance", seed=11, TIERFLOW_SCORING_FLUSH_INTERVAL=str(FLUSH_INTERVAL)
    )
    stream, expected, app_id, env = setup.stream, setup.expected, setup.app_id, setup.env
    first, second = stream[:200], stream[200:]
    workers = [Worker("a", env, tmp_path)]
    try:
        await workers[0].ready()
        # the first batch is flushed at once; the second is scored and held unflushed
        await produce_events(bootstrap, first)
        await _until_scored(workers[0], replay(first)[0])
        await produce_events(bootstrap, second)
        await _until_scored(workers[0], expected)

        workers.append(Worker("b", env, tmp_path))  # the join revokes half of a's partitions
        await asyncio.gather(*(w.ready() for w in workers))
        assert await _committed(bootstrap, app_id, settings.topic_partitions) == {}, (
            "the scenario needs a rebalance before the group's first commit"
        )

        latest = await changelog_states(bootstrap, app_id, expected, timeout=FLUSH_INTERVAL * 3)
        positions = {e.event.event_id: n for n, e in enumerate(stream)}
        wrong = mismatched(latest, expected)
        assert not wrong, [  # chunk 0: the flushed batch, chunk 1: the unflushed one
            divergence(o, latest.get(o.encode()), expected[o.encode()], positions, len(first))
            for o in wrong[:5]
        ]
    finally:
        for worker in workers:
            worker.stop()


async def _until_scored(worker: Worker, expected: dict[bytes, State], timeout: float = 60) -> None:
    """Until the worker's in-memory state (flushed or not) of everyone is ``expected``'s."""
    deadline = time.monotonic() + timeout
    while stale := await stale_people(worker, expected):
        assert time.monotonic() < deadline, f"not scored in {timeout} s: {stale}"
        await asyncio.sleep(0.5)


async def _committed(bootstrap: str, group: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets on events.resolved (an offset fetch; it joins nothing)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        offsets = {
            n: await consumer.committed(TopicPartition(EVENTS_RESOLVED.name, n))
            for n in range(partitions)
        }
    finally:
        await consumer.stop()
    return {n: offset for n, offset in offsets.items() if offset is not None and offset >= 0}
