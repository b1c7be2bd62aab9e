"""kill -9 scoring workers while merges, erasures and the late events of merged and erased people
flow: after every phase the changelog equals a pure replay of the processor, and so do the tier
changes, the profiles topic and what a restarted worker holds."""

from __future__ import annotations

import random
from pathlib import Path

from shared.settings import CommonSettings
from tests.crash.notices_scenario import run


async def test_killed_workers_fold_and_erase_once(settings: CommonSettings, tmp_path: Path) -> None:
    """Two workers: during the stream one at a time is killed at random and restarted at once
    (the dead member holds its partitions until its session expires), in each later phase both
    are. A merge's fold crosses partitions and so, often, workers, and a notice or late event
    processed again after a kill sends its fold again, which must be ignored by its fold id."""
    seed = random.randrange(1 << 30)
    result = await run(
        settings.kafka_bootstrap,
        settings.database_url,
        tmp_path,
        people=90,
        events=1500,
        workers=2,
        partitions=settings.topic_partitions,
        seed=seed,
    )
    assert result.ok, f"seed {seed}: {result}"  # a string: pytest cuts a repr at 240 characters
    assert result.kills == 2 + 4 * 2  # two in the stream, both workers in each later phase
