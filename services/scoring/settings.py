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
        default=16_384,
        ge=1,
        description="Producer batch bytes; 1 on Tansu, whose end offsets under-count batches "
        "and would end changelog recovery early.",
    )
