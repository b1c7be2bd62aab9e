"""The census each worker keeps of its people (deadline heap, tier population, entry count) is
rebuilt from the table at every rebalance by a scan that lets the loop score between slices.
Rebuilt while events keep arriving, it must count what the table holds at rest, and the timer
must then find every person.

The workers yield every 64 people (``TIERFLOW_SCORING_REBUILD_SLICE_SECONDS=0``) on RocksDB, so
the batches of a steady trickle of events are scored in the middle of the scans.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from services.scoring.census import deadline_of, tier_of
from services.scoring.scorer import State
from services.scoring.service import reevaluate
from shared.settings import CommonSettings
from tests.crash.scenario import (
    MODEL,
    Replayed,
    changelog_states,
    mismatched,
    produce_events,
    replay,
)
from tests.crash.scoring_worker import Worker, read_until, set_clock
from tests.factories import T0

REBUILDS = "tierflow_scoring_rebuild_duration_seconds_count"


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
    )
    stream, expected, app_id, env = setup.stream, setup.expected, setup.app_id, setup.env
    first, second = stream[:3000], stream[3000:]
    workers = [Worker("a", env, tmp_path)]
    try:
        await workers[0].ready()
        await produce_events(bootstrap, first)
        await changelog_states(bootstrap, app_id, replay(first)[0], timeout=120)

        # b's join makes a rebuild for the half it keeps and b for the half it takes, both
        # scanning a table of ~1,500 people while the rest of the stream trickles in
        workers.append(Worker("b", env, tmp_path))
        await asyncio.gather(_trickle(bootstrap, second), *(w.ready() for w in workers))
        latest = await changelog_states(bootstrap, app_id, expected, timeout=180)
        assert mismatched(latest, expected) == []
        assert [await w.metric(REBUILDS) >= 1 for w in workers] == [True, True]
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
        for worker in workers:
            worker.stop()


async def _trickle(bootstrap: str, events: list[Any]) -> None:
    """``events`` in small chunks over ~10 s: a join, both recoveries and both rebuilds."""
    for start in range(0, len(events), 15):
        await produce_events(bootstrap, events[start : start + 15])
        await asyncio.sleep(0.05)


async def _census_matches_the_table(workers: list[Worker], bootstrap: str, app_id: str) -> None:
    """The workers' gauges added up equal a count of every person in the changelog at rest (the
    table holds other tests' people too: the workers score the shared topic)."""
    deadline = time.monotonic() + 60
    while True:
        table = await _changelog_until(bootstrap, app_id, {}, timeout=2)
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

    await read_until(bootstrap, f"{app_id}-people-changelog", converged, timeout=timeout)
    return latest


def _json(state: State) -> Any:
    return orjson.loads(orjson.dumps(state))
