"""Ingest settings (env prefix ``TIERFLOW_``)."""

from __future__ import annotations

import math

from pydantic import Field, SecretStr

from shared.settings import CommonSettings


class IngestSettings(CommonSettings):
    """Where ingest listens, its limits, and the development source."""

    host: str = Field(default="127.0.0.1", validation_alias="TIERFLOW_INGEST_HOST")
    port: int = Field(default=8080, validation_alias="TIERFLOW_INGEST_PORT")
    dev_write_key: SecretStr = Field(
        default=SecretStr("dev-write-key"),
        description="Write key of the 'dev' source created at startup; empty disables it.",
    )
    max_event_bytes: int = Field(default=32 * 1024, description="Largest accepted event.")
    max_request_bytes: int = Field(default=500 * 1024, description="Largest accepted request.")
    max_clock_ahead_s: float = Field(
        default=60.0,
        ge=0,
        description="How far after its arrival an event may be dated; a later time is the "
        "client's clock being ahead and is corrected (the client's value is kept as "
        "originalTimestamp).",
    )
    produce_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Longest wait for Kafka's ack, or for Postgres to check a write key not "
        "cached, before answering 503.",
    )
    retry_after_s: int = Field(default=5, ge=1, description="Retry-After sent with 503.")
    default_rate_limit_per_s: int = Field(
        default=10_000,
        ge=0,
        description="Events/s per source per replica unless the source has its own; 0: none.",
    )
    source_cache_ttl_s: float = Field(
        default=30.0, ge=0, description="How long a write-key lookup is cached (revocation lag)."
    )

    @property
    def drain_s(self) -> int:
        """How long a stopping ingest lets requests in flight finish: the longest a request can
        wait (a write key Postgres checks, then Kafka's ack, each bounded by the produce
        timeout) and 2 s of margin, so every request read is answered, 200 or 503."""
        return math.ceil(2 * self.produce_timeout_s) + 2
