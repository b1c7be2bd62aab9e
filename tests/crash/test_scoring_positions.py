"""A group whose committed offsets are gone resumes from the table's position markers, so events
older than the ids a person remembers (the last 256) are not counted a second time.

Kafka expires committed offsets after ``offsets.retention.minutes`` (and on Tansu they were
seen missing or not written, ``docs/benchmarks.md``); here they are rewound to 0 while no worker
runs, which is what a worker finding none does (it starts from the beginning). On the code
before the markers each person ended with every event counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.structs import OffsetAndMetadata

from services.scoring.app import FED_TOPICS, people_changelog
from services.scoring.positions import POSITION, resumes_at
from services.scoring.recovery import true_ends
from shared.settings import CommonSettings
from shared.topics import EVENTS_RESOLVED
from tests.crash.scenario import (
    Replayed,
    changelog_states,
    divergence,
    mismatched,
    produce_events,
    replay,
)
from tests.crash.scoring_worker import Worker, read_until
from tests.factories import T0, make_resolved

SETTLE = 90.0
OUTCOMES = ("duplicate", "scored", "refold", "folded", "forwarded", "merge", "erased")


async def test_lost_committed_offsets_count_no_event_twice(
    settings: CommonSettings, tmp_path: Path, fresh_app: Callable[..., Replayed]
) -> None:
    bootstrap, partitions = settings.kafka_bootstrap, settings.topic_partitions
    setup = fresh_app("scoring-positions", people=2, events=640)  # ~320 events each
    stream, expected, app_id, env = setup.stream, setup.expected, setup.app_id, setup.env
    assert min(state["events"] for state in expected.values()) > 256
    first = Worker("a", env, tmp_path)
    try:
        await first.ready()
        await produce_events(bootstrap, stream)
        latest = await changelog_states(bootstrap, app_id, expected, timeout=SETTLE)
        assert not mismatched(latest, expected)
        # everything in the fed topics (other tests' records too) is covered by a marker
        await _until_all_marked(bootstrap, app_id, partitions)
    finally:
        first.stop()

    await _rewind(bootstrap, app_id, partitions)
    late = make_resolved(
        stream[0].oneid, message_id=f"{app_id}-late", timestamp=T0 + timedelta(days=91)
    )
    everything = [*stream, late]
    want = replay(everything)[0]
    second = Worker("b", env, tmp_path)
    try:
        await second.ready()
        await produce_events(bootstrap, [late])
        latest = await changelog_states(bootstrap, app_id, want, timeout=SETTLE)
        positions = {e.event.event_id: n for n, e in enumerate(everything)}
        wrong = mismatched(latest, want)
        assert not wrong, [
            divergence(o, latest.get(o.encode()), want[o.encode()], positions, len(stream))
            for o in wrong
        ]
        # it resumed where the first worker stopped: nothing was read again
        events = "tierflow_scoring_events_total"
        outcomes = {o: await second.metric(events, outcome=o) for o in OUTCOMES}
        # folds say commands were left over, more scored events a marker behind
        assert outcomes["duplicate"] == outcomes["refold"] == 0, outcomes
        assert outcomes["scored"] == 1, outcomes
        resumed = "tierflow_scoring_resumed_by_marker_total"
        assert await second.metric(resumed, committed="missing") >= 1
    finally:
        second.stop()


async def _until_all_marked(bootstrap: str, app_id: str, partitions: int) -> None:
    """Until the changelog's position markers reach the end of every fed topic, and stay there
    once the ends are read again.

    The first worker reads the shared topics from the beginning, and scoring commands keep
    arriving while it works: its own folds of other tests' merges and late events. Stopped
    before it reads them, it leaves them to the second worker, which counted a fold the topic
    already held (an earlier test's workers sent the same one) as a duplicate (a "refold"
    since): one CI run's 134 duplicates, when the wait covered events.resolved only. With
    that wait, the crash tests in CI's order left the second worker 182 refolds.
    Folds are sent before the flush that moves the marker past their cause, so a round that
    finds no new record ends the wait.
    """
    ends: dict[tuple[str, int], int] = {}
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        latest = await _ends(bootstrap, partitions)
        if latest == ends:
            return
        ends = latest
        await _until_marked(bootstrap, app_id, ends, deadline - time.monotonic())
    raise AssertionError(f"the fed topics kept growing for {SETTLE} s: {ends}")


async def _until_marked(
    bootstrap: str, app_id: str, ends: dict[tuple[str, int], int], timeout: float
) -> None:
    """Until the changelog's position markers reach ``ends`` (by topic and partition)."""
    marked: dict[tuple[str, int], int] = {}
    read = 0

    def covered() -> bool:
        return all(marked.get(tp, 0) >= end for tp, end in ends.items())

    def reached(records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        nonlocal read
        for record in records[read:]:
            if record.value is not None and POSITION.encode() in record.value:
                marker = orjson.loads(record.value)
                for topic in FED_TOPICS:
                    marked[topic, record.partition] = resumes_at(marker, topic)
        read = len(records)
        return covered()

    await read_until(bootstrap, people_changelog(app_id), reached, timeout=timeout)
    assert covered(), (marked, ends)


async def _ends(bootstrap: str, partitions: int) -> dict[tuple[str, int], int]:
    """The end offset of each partition of every fed topic (read, not as Tansu reports it)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, n) for topic in FED_TOPICS for n in range(partitions)]
        reported = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {
        (tp.topic, tp.partition): end for tp, end in (await true_ends(bootstrap, reported)).items()
    }


class _AsFaust(RoundRobinPartitionAssignor):
    """Round robin under the name of Faust's assignor."""

    name = "faust"


async def _rewind(bootstrap: str, group: str, partitions: int) -> None:
    """Commit offset 0 on every partition of events.resolved for ``group``, as its only member
    (the broker takes commits from members only)."""
    consumer = AIOKafkaConsumer(
        EVENTS_RESOLVED.name,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=6000,
        rebalance_timeout_ms=3000,
        partition_assignment_strategy=(_AsFaust,),  # the group keeps its members' protocol
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + SETTLE
        while len(consumer.assignment()) < partitions and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=200)
        tps = sorted(consumer.assignment())
        assert len(tps) == partitions, tps
        await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in tps})
        assert [await consumer.committed(tp) for tp in tps] == [0] * partitions
    finally:
        await consumer.stop()
