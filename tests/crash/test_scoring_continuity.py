"""Polls lost between the fetcher and the scoring loop, with no seek after them, are fetched
again: every person still ends equal to a pure replay. Without the hole check the same fault
loses their events (the second case shows the fault is real). A lost last poll of a partition
is fetched again while other partitions stay busy, not only once the feed idles, and so are
records Faust drops inside its getmany after aiokafka handed them over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from shared.contracts import encode
from shared.kafka import partition_of
from shared.settings import CommonSettings
from shared.topics import EVENTS_RESOLVED
from tests.crash.scenario import (
    Replayed,
    changelog_states,
    divergence,
    mismatched,
    produce_events,
)
from tests.crash.scoring_worker import Worker
from tests.factories import make_resolved

CHUNKS = 8


@pytest.mark.parametrize("checked", [True, False], ids=["fetched-again", "unchecked-loses"])
async def test_polls_lost_on_the_way_to_the_loop_are_fetched_again(
    settings: CommonSettings, tmp_path: Path, fresh_app: Callable[..., Replayed], checked: bool
) -> None:
    bootstrap = settings.kafka_bootstrap
    setup = fresh_app("scoring-lossy", events=800, TIERFLOW_TEST_UNCHECKED="0" if checked else "1")
    stream, expected, app_id, env = setup.stream, setup.expected, setup.app_id, setup.env
    env["TIERFLOW_TEST_LOSE_KEYS"] = stream[0].oneid.rsplit("-", 1)[0]
    worker = Worker("lossy", env, tmp_path, module="tests.crash.lossy_worker")
    try:
        await worker.ready()
        size = -(-len(stream) // CHUNKS)
        for chunk in range(CHUNKS):  # separate polls, so that some are lost
            await produce_events(bootstrap, stream[chunk * size : (chunk + 1) * size])
            await asyncio.sleep(0.3)
        latest = await changelog_states(bootstrap, app_id, expected, timeout=60 if checked else 15)
        wrong = mismatched(latest, expected)
        refetches = await worker.metric("tierflow_scoring_refetches_total")
        if checked:
            positions = {e.event.event_id: n for n, e in enumerate(stream)}
            assert not wrong, [
                divergence(o, latest.get(o.encode()), expected[o.encode()], positions, size)
                for o in wrong[:5]
            ]
            assert refetches >= 1
        else:
            assert wrong, "the lost polls should have cost events without the hole check"
            assert refetches == 0
    finally:
        worker.stop()


async def test_a_lost_last_poll_is_fetched_again_while_other_partitions_stay_busy(
    settings: CommonSettings, tmp_path: Path, fresh_app: Callable[..., Replayed]
) -> None:
    bootstrap, partitions = settings.kafka_bootstrap, settings.topic_partitions
    setup = fresh_app("scoring-quiet", people=1, events=40)
    stream, expected, env = setup.stream, setup.expected, setup.env
    quiet = stream[0].oneid
    env["TIERFLOW_TEST_LOSE_KEYS"] = quiet
    env["TIERFLOW_TEST_LOSE_POLLS"] = "0"  # the quiet person's only poll
    busy = [
        key
        for key in (f"busy-{n}".encode() for n in range(64))
        if partition_of(key, partitions) != partition_of(quiet.encode(), partitions)
    ]
    traffic_ends = asyncio.Event()

    async def traffic() -> int:
        """Events of other partitions every 50 ms (the feed idles after 1 s without a poll),
        until told to stop or 30 s passed."""
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        sent = 0
        try:
            while not traffic_ends.is_set() and sent < 600:
                key = busy[sent % len(busy)]
                event = make_resolved(key.decode(), message_id=f"{setup.app_id}-busy-{sent}")
                await producer.send_and_wait(EVENTS_RESOLVED.name, encode(event), key=key)
                sent += 1
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()
        return sent

    worker = Worker("quiet", env, tmp_path, module="tests.crash.lossy_worker")
    try:
        await worker.ready()
        await produce_events(bootstrap, stream)  # one poll, lost; nothing of it follows
        busy_traffic = asyncio.create_task(traffic())
        latest = await changelog_states(bootstrap, setup.app_id, expected, timeout=20)
        traffic_ends.set()
        sent = await busy_traffic
        assert sent < 600, "the traffic ran out: the feed may have idled"
        assert not mismatched(latest, expected), latest.get(quiet.encode())
        assert await worker.metric("tierflow_scoring_refetches_total") >= 1
    finally:
        traffic_ends.set()
        worker.stop()


async def test_records_dropped_inside_faust_getmany_are_fetched_again(
    settings: CommonSettings, tmp_path: Path, fresh_app: Callable[..., Replayed]
) -> None:
    """aiokafka hands a fetch's records to Faust's getmany, which stops yielding them when the
    flow stops or the generation changes and counts on a seek back to the committed offsets.
    Here the person's only poll is dropped there and no seek follows: with reads noted only as
    records reached the feed, nothing showed the loss and the person stayed unscored."""
    setup = fresh_app("scoring-getmany", people=1, events=40)
    stream, expected, env = setup.stream, setup.expected, setup.env
    env["TIERFLOW_TEST_LOSE_KEYS"] = stream[0].oneid
    env["TIERFLOW_TEST_LOSE_POLLS"] = "0"
    env["TIERFLOW_TEST_LOSE_IN"] = "getmany"
    worker = Worker("getmany", env, tmp_path, module="tests.crash.lossy_worker")
    try:
        await worker.ready()
        await produce_events(settings.kafka_bootstrap, stream)  # nothing of it follows
        latest = await changelog_states(
            settings.kafka_bootstrap, setup.app_id, expected, timeout=20
        )
        assert not mismatched(latest, expected), latest.get(stream[0].oneid.encode())
        assert await worker.metric("tierflow_scoring_refetches_total") >= 1
    finally:
        worker.stop()
