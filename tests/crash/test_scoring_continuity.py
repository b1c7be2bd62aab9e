"""Polls lost between the fetcher and the scoring loop, with no seek after them, are fetched
again: every person still ends equal to a pure replay. Without the hole check the same fault
loses their events (the second case shows the fault is real)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.settings import CommonSettings
from tests.crash.scenario import (
    Replayed,
    changelog_states,
    divergence,
    mismatched,
    produce_events,
)
from tests.crash.scoring_worker import Worker

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
        refetches = await worker.counter("tierflow_scoring_refetches_total")
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
