"""The scoring worker's Faust settings that come from ours: the consumer's fetch wait, not
Faust's fixed 1.5 s (on Tansu the wait bounds the event→tier change latency), and the address
a worker advertises to the others."""

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


def test_a_worker_advertises_its_own_address_not_the_one_it_binds(tmp_path: Path) -> None:
    """Explain pages are forwarded by the address each worker advertises: two pods that both
    advertised 0.0.0.0:8082 each took every person for their own."""
    settings = ScoringSettings.model_validate(
        {
            "TIERFLOW_SCORING_HOST": "0.0.0.0",
            "TIERFLOW_SCORING_ADVERTISED_HOST": "10.1.2.3",
            "scoring_data_dir": tmp_path,
        }
    )
    app: Any = create_app(settings)
    assert str(app.conf.canonical_url) == "http://10.1.2.3:8082"
    assert app.conf.web_bind == "0.0.0.0"
    local = ScoringSettings(scoring_data_dir=tmp_path)
    assert str(create_app(local).conf.canonical_url) == "http://127.0.0.1:8082"


def test_an_ipv6_advertised_address_is_bracketed(tmp_path: Path) -> None:
    settings = ScoringSettings.model_validate(
        {"TIERFLOW_SCORING_ADVERTISED_HOST": "fd00:10:244::5", "scoring_data_dir": tmp_path}
    )
    app: Any = create_app(settings)
    assert str(app.conf.canonical_url) == "http://[fd00:10:244::5]:8082"
