"""The scoring worker's consumer takes its fetch wait from the settings, not Faust's fixed 1.5 s
(on Tansu the wait bounds the event→tier change latency)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.scoring.app import create_app
from services.scoring.settings import ScoringSettings
from shared.kafka import build_consumer
from shared.settings import CommonSettings


async def test_scoring_consumer_fetch_wait_is_the_setting(tmp_path: Path) -> None:
    settings = ScoringSettings(kafka_fetch_max_wait_ms=123, scoring_data_dir=tmp_path)
    app: Any = create_app(settings)
    thread = app.consumer._thread  # built, not started: nothing connects
    consumer = thread._create_worker_consumer(thread.transport)
    assert consumer._fetch_max_wait_ms == 123


async def test_service_consumers_fetch_wait_is_the_setting() -> None:
    consumer = build_consumer(CommonSettings(kafka_fetch_max_wait_ms=77), "t", group_id="g")
    assert consumer._fetch_max_wait_ms == 77
