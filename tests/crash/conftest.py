"""Crash tests get their own embedded broker and Postgres (the integration fixtures, reused)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.settings import CommonSettings
from tests.crash.scenario import Replayed, replayed
from tests.integration.conftest import infra, settings

__all__ = ["fresh_app", "infra", "settings"]


@pytest.fixture
def fresh_app(settings: CommonSettings, tmp_path: Path) -> Callable[..., Replayed]:
    """Makes a stream for a new scoring app named after its argument, with the replay's result
    and the workers' environment (``people``, ``events``, ``seed``: random unless given; other
    keywords are extra environment)."""

    def make(
        name: str, *, people: int = 40, events: int = 400, seed: int | None = None, **env: str
    ) -> Replayed:
        return replayed(
            settings.kafka_bootstrap,
            settings.database_url,
            tmp_path,
            name=name,
            partitions=settings.topic_partitions,
            people=people,
            events=events,
            seed=random.randrange(1 << 30) if seed is None else seed,
            **env,
        )

    return make
