"""Scoring settings (env prefix ``TIERFLOW_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.scoring.rules import DEFAULT_MODEL_PATH
from shared.settings import CommonSettings


class ScoringSettings(CommonSettings):
    """Where scoring listens, where its Faust state lives, and which model it applies."""

    host: str = Field(default="127.0.0.1", validation_alias="TIERFLOW_SCORING_HOST")
    port: int = Field(default=8082, validation_alias="TIERFLOW_SCORING_PORT")
    advertised_host: str | None = Field(
        default=None,
        validation_alias="TIERFLOW_SCORING_ADVERTISED_HOST",
        description="Where the other workers reach this one (the pod IP on Kubernetes); "
        "default: host. A worker forwards a person's explain page to the worker that owns "
        "them, by the address each advertises, so workers bound to 0.0.0.0 that advertised "
        "that took every person for their own and answered 404 for most.",
    )
    app_id: str = Field(default="tierflow-scoring", validation_alias="TIERFLOW_SCORING_APP_ID")
    scoring_store: str = Field(
        default="memory://", description="Faust table store: memory:// or rocksdb://."
    )
    scoring_data_dir: Path = Field(
        default=Path("/tmp/tierflow-scoring"),  # noqa: S108 - overridden in containers
        description="Faust data directory (RocksDB files, worker state).",
    )
    scoring_model_path: Path = Field(default=DEFAULT_MODEL_PATH)
    scoring_producer_max_batch_size: int = Field(
        default=512 * 1024,
        ge=1,
        description="Producer batch bytes: large, since a batch writes many people's states "
        "and one request per partition is in flight. Recovery reads changelogs to their real "
        "end, so brokers that under-count batched records (Tansu) need no special value.",
    )
    scoring_max_fetch_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Bytes per partition one fetch may return (Faust consumer_max_fetch_size): "
        "recovery replays the changelog one fetch per round trip, so large fetches make "
        "it faster.",
    )
    scoring_batch_size: int = Field(
        default=4000,
        ge=1,
        description="Records per poll, and the most the scoring loop takes as one batch "
        "(whole polls): larger batches mean fewer, larger produce requests; a batch keeps the "
        "event loop busy for its whole scoring (~0.3 ms per record).",
    )
    scoring_flush_interval: float = Field(
        default=1.0,
        ge=0,
        description="Seconds between writes of the changed people's changelog records (each "
        "person's latest state once), after which the messages behind them are committed; 0 "
        "writes them after every batch. Tier changes and profiles go out with every batch.",
    )
    scoring_rebuild_slice_seconds: float = Field(
        default=0.02,
        ge=0,
        description="After a rebalance the deadline heap is rebuilt from the table by a scan "
        "that hands the event loop back after this long (and checks the clock every 64 "
        "people); batches are scored in between. 0 yields every 64 people (tests).",
    )
    scoring_timer_interval: float = Field(
        default=0.5, gt=0, description="Seconds between looks at the deadline heap."
    )
    scoring_clock_file: Path | None = Field(
        default=None,
        description="Tests and demos: read 'now' (epoch seconds) from this file, not the clock.",
    )
    scoring_profiles_group: str = Field(
        default="tierflow-scoring-profiles",
        description="Consumer group writing tierflow.profiles into the Postgres read model.",
    )
