"""Settings shared by every service; each service extends :class:`CommonSettings`.

Only this module (through pydantic-settings) reads the environment. Entrypoints build a settings
object once and pass it down.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class CommonSettings(BaseSettings):
    """Connection and operational settings every process needs (env prefix ``TIERFLOW_``)."""

    model_config = SettingsConfigDict(
        env_prefix="TIERFLOW_",
        extra="ignore",
        frozen=True,
        # a refusal names the setting and why; repeating its value would put webhook secrets,
        # tokens and database passwords in the logs that collect a crash-looping pod's output
        hide_input_in_errors=True,
    )

    kafka_bootstrap: str = Field(
        default="127.0.0.1:9092", description="Kafka bootstrap servers, comma separated."
    )
    kafka_idempotence: bool = Field(
        default=False,
        description="Idempotent producer: on for Apache Kafka; Tansu does not support it.",
    )
    kafka_session_timeout_ms: int = Field(
        default=10_000, description="Consumer-group session timeout."
    )
    kafka_rebalance_timeout_ms: int = Field(
        default=10_000, description="Consumer-group rebalance timeout; short on Tansu."
    )
    kafka_heartbeat_interval_ms: int = Field(default=1_000, description="Consumer heartbeat.")
    kafka_fetch_max_wait_ms: int = Field(
        default=100,
        ge=1,
        description="Longest a consumer's fetch waits for records. On Tansu, records arriving "
        "while a fetch waits come back only when the wait ends, so it bounds each hop's "
        "latency there; Kafka answers as soon as records arrive.",
    )
    database_url: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/tierflow",
        description="SQLAlchemy URL of the Postgres cluster (asyncpg driver).",
    )
    database_pool_size: int = Field(default=5, ge=1, description="Connections per process.")
    topic_partitions: int = Field(default=6, ge=1, description="Partitions of new topics.")
    topic_replication: int = Field(default=1, ge=1, description="Replication of new topics.")
    log_level: LogLevel = Field(default="INFO", description="Root log level.")
    log_json: bool = Field(default=True, description="JSON logs (one object per line).")

    @field_validator("database_url")
    @classmethod
    def _asyncpg_driver(cls, value: str) -> str:
        """Accept plain ``postgresql://`` URLs (as other tools print them) and pin asyncpg."""
        if value.startswith("postgresql://"):
            return "postgresql+asyncpg://" + value.removeprefix("postgresql://")
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("database_url must be a postgresql:// or postgresql+asyncpg:// URL")
        return value
