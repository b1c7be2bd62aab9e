"""kill -9 scoring workers mid-stream and restart them at once: the changelog ends equal to a pure
replay of the model, and every tier change exists once per id, with one content per id."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from shared.settings import CommonSettings
from tests.crash.scenario import run


@pytest.mark.parametrize(
    ("workers", "store"),
    [(1, "memory"), (2, "memory"), (1, "rocksdb")],
    ids=["restart-at-once", "two-workers", "rocksdb-volume"],
)
async def test_killed_workers_lose_and_duplicate_nothing(
    settings: CommonSettings, tmp_path: Path, workers: int, store: str
) -> None:
    """With ``rocksdb`` (production's store) every restart, and the final one, reopens the
    killed worker's RocksDB directory, as a pod does its volume, and replays only the
    changelog's tail."""
    seed = random.randrange(1 << 30)
    volume = {
        "TIERFLOW_SCORING_STORE": "rocksdb://",
        "TIERFLOW_SCORING_DATA_DIR": str(tmp_path / "rocksdb"),
    }
    result = await run(
        settings.kafka_bootstrap,
        settings.database_url,
        tmp_path,
        people=150,
        events=4000,
        kills=3,
        workers=workers,
        partitions=settings.topic_partitions,
        seed=seed,
        extra_env=volume if store == "rocksdb" else None,
    )
    assert result.ok, f"seed {seed}: {result}"  # a string: pytest cuts a repr at 240 characters
