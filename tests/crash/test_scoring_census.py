"""The census each worker keeps of its people (deadline heap, tier population, entry count) is
rebuilt from the table at every rebalance by a scan that lets the loop score between slices.
Rebuilt while events keep arriving, it must count what the table holds at rest, and the timer
must then find every person.

The workers yield every 64 entries (``TIERFLOW_SCORING_REBUILD_SLICE_SECONDS=0``) on RocksDB.
A rebuild begins at the first tick after a rebalance, often before the loop resumes: for batches
of a steady trickle of events to be scored in the middle of a scan, the table also holds 60,000
merge markers (people absorbed long ago; each scan lasts ~0.1 s), ticks are 1.5 s apart, and
workers join and leave until the workers' metric shows a person scored during a scan.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from services.scoring.app import people_changelog
from services.scoring.census import deadline_of, tier_of
from services.scoring.positions import is_position
from services.scoring.processor import MERGED
from services.scoring.scorer import State
from services.scoring.service import reevaluate
from shared.contracts import ResolvedEvent, encode
from shared.kafka import create_topics
from shared.settings import CommonSettings
from shared.topics import EVENTS_RESOLVED, TopicSpec
from tests.crash.scenario import (
    MODEL,
    Replayed,
    changelog_states,
    mismatched,
    produce_events,
    replay,
)
from tests.crash.scoring_worker import Worker, produce, read_until, set_clock
from tests.factories import T0

REBUILDS = "tierflow_scoring_rebuild_duration_seconds_count"
FROM_LOOP = "tierflow_scoring_rebuild_from_loop_total"
MARKERS = 60_000
ROUNDS = 8


async def test_a_census_rebuilt_while_events_arrive_counts_the_table_and_times_everyone(
    settings: CommonSettings, tmp_path: Path, fresh_app: Callable[..., Replayed]
) -> None:
    bootstrap = settings.kafka_bootstrap
    setup = fresh_app(
        "scoring-census",
        people=1500,
        events=6000,
        seed=5,
        TIERFLOW_SCORING_STORE="rocksdb://",
        TIERFLOW_SCORING_REBUILD_SLICE_SECONDS="0",
        # a worker's loop resumes 0.2-1 s after a rebalance and its rebuild begins at the next
        # tick: ticks 1.5 s apart begin many rebuilds after the loop resumed
        TIERFLOW_SCORING_TIMER_INTERVAL="1.5",
    )
    stream, expected, app_id, env = setup.stream, setup.expected, setup.app_id, setup.env
    first, second = stream[:3000], stream[3000:]
    await _merge_markers(settings, app_id, MARKERS)
    a = Worker("a", env, tmp_path)
    workers = [a]
    trickle: asyncio.Task[None] | None = None
    try:
        await a.ready()
        await produce_events(bootstrap, first)
        await changelog_states(bootstrap, app_id, replay(first)[0], timeout=120)

        # b joins and leaves while the rest of the stream trickles in, each time making both
        # workers rebuild, until a batch was scored in the middle of a scan
        enough = asyncio.Event()
        trickle = asyncio.create_task(_trickle(bootstrap, second, enough))
        scored = 0.0
        for _ in range(ROUNDS):
            b = Worker("b", env, tmp_path)
            workers.append(b)
            await _rebuilt(a, b.ready())
            scored = await a.metric(FROM_LOOP, when="scored") + await b.metric(
                FROM_LOOP, when="scored"
            )
            if scored:
                break
            await _rebuilt(a, asyncio.to_thread(b.stop))
            workers.remove(b)
            scored = await a.metric(FROM_LOOP, when="scored")
            if scored:
                break
        assert scored, f"no batch was scored during a scan in {ROUNDS} rounds"
        enough.set()
        await trickle
        latest = await changelog_states(bootstrap, app_id, expected, timeout=180)
        assert mismatched(latest, expected) == []
        await _census_matches_the_table(workers, bootstrap, app_id)

        # every deadline is in one of the rebuilt heaps: moved past all of them, the clock
        # makes the timer re-evaluate every person, with no event
        later = (T0 + timedelta(days=400)).timestamp()
        set_clock(env, later)
        due = {key: reevaluate(key.decode(), s, later, MODEL)[0] for key, s in expected.items()}
        latest = await _changelog_until(bootstrap, app_id, due, timeout=120)
        assert [k.decode() for k, s in due.items() if latest.get(k) != _json(s)] == []
        await _census_matches_the_table(workers, bootstrap, app_id)
    finally:
        if trickle is not None:
            trickle.cancel()
        for worker in workers:
            worker.stop()


async def _merge_markers(settings: CommonSettings, app_id: str, count: int) -> None:
    """``count`` people merged away, on the people changelog before any worker starts (which
    then finds the topic there), so that every worker recovers them into its table."""
    changelog = people_changelog(app_id)
    spec = TopicSpec(
        changelog, "oneid", "the people table's changelog", {"cleanup.policy": "compact"}
    )
    await create_topics(settings, [spec])
    marker = orjson.dumps({MERGED: "census-winner"})
    await produce(
        settings.kafka_bootstrap,
        changelog,
        [(f"absorbed-{i}".encode(), marker) for i in range(count)],
    )


async def _rebuilt(worker: Worker, change: Awaitable[object]) -> None:
    """Await ``change`` (a join or a leave), then ``worker``'s rebuild after the rebalance."""
    before = await worker.metric(REBUILDS)
    await change
    deadline = time.monotonic() + 60
    while await worker.metric(REBUILDS) == before:
        assert time.monotonic() < deadline, "no rebuild after the rebalance"
        await asyncio.sleep(0.2)


async def _trickle(bootstrap: str, events: list[ResolvedEvent], enough: asyncio.Event) -> None:
    """``events`` at ~100 a second (the rest at once when ``enough`` is set), so that a worker
    whose rebuild begins after its loop resumed finds polls waiting at the yields of its scan."""
    items = [(event.oneid.encode(), encode(event)) for event in events]
    await produce(bootstrap, EVENTS_RESOLVED.name, items, pace_s=0.01, hurry=enough)


async def _census_matches_the_table(workers: list[Worker], bootstrap: str, app_id: str) -> None:
    """The workers' gauges added up equal a count of every person in the changelog at rest (the
    table holds other tests' people too: the workers score the shared topic), and merge
    markers; position markers are not counted."""
    deadline = time.monotonic() + 60
    while True:
        everything = await _changelog_until(bootstrap, app_id, {}, timeout=2)
        table = {key: s for key, s in everything.items() if not is_position(s)}
        want = {
            "entries": len(table),
            "deadlines": sum(deadline_of(s) is not None for s in table.values()),
            **{f"tier {t}": n for t, n in Counter(tier_of(s) for s in table.values()).items()},
        }
        got: defaultdict[str, float] = defaultdict(float)
        for worker in workers:
            got["entries"] += await worker.metric("tierflow_scoring_table_entries", table="people")
            got["deadlines"] += await worker.metric(
                "tierflow_scoring_table_entries", table="deadlines"
            )
            for tier in {"none", *(t.name for t in MODEL.tiers)}:
                got[f"tier {tier}"] += await worker.metric(
                    "tierflow_scoring_tier_population", tier=tier
                )
        held = {name: count for name, count in got.items() if count}
        if held == want:
            return
        assert time.monotonic() < deadline, f"census {held} != table {want}"
        await asyncio.sleep(1)


async def _changelog_until(
    bootstrap: str, app_id: str, want: dict[bytes, State], *, timeout: float
) -> dict[bytes, State]:
    """Every key's last state in the people changelog, read until each of ``want`` is there (or
    the timeout)."""
    latest: dict[bytes, Any] = {}
    read = 0
    wanted = {key: _json(state) for key, state in want.items()}

    def converged(records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        nonlocal read
        for record in records[read:]:
            if record.key is not None:
                if record.value is None:
                    latest.pop(record.key, None)
                else:
                    latest[record.key] = orjson.loads(record.value)
        read = len(records)
        return bool(wanted) and all(latest.get(k) == v for k, v in wanted.items())

    await read_until(bootstrap, people_changelog(app_id), converged, timeout=timeout)
    return latest


def _json(state: State) -> Any:
    return orjson.loads(orjson.dumps(state))
