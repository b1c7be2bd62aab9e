"""Identity settings (env prefix ``TIERFLOW_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from services.identity.rules import DEFAULT_RULES_PATH
from shared.settings import CommonSettings


class IdentitySettings(CommonSettings):
    """Where identity listens and how it consumes."""

    host: str = Field(default="127.0.0.1", validation_alias="TIERFLOW_IDENTITY_HOST")
    port: int = Field(default=8081, validation_alias="TIERFLOW_IDENTITY_PORT")
    group_id: str = Field(default="tierflow-identity", validation_alias="TIERFLOW_IDENTITY_GROUP")
    admin_token: SecretStr = Field(description="Bearer token of the operator APIs (no default).")
    batch_size: int = Field(default=500, ge=1, validation_alias="TIERFLOW_IDENTITY_BATCH_SIZE")
    dedup_window_hours: float = Field(
        default=24.0,
        gt=0,
        description="A re-sent messageId within this window is counted once.",
        validation_alias="TIERFLOW_IDENTITY_DEDUP_WINDOW_HOURS",
    )
    rules_path: Path = Field(
        default=DEFAULT_RULES_PATH,
        description="Identity rules YAML (priority, per-type limits, blocked values).",
        validation_alias="TIERFLOW_IDENTITY_RULES_PATH",
    )
    phone_region: str | None = Field(
        default=None,
        description="Region (ISO 3166, e.g. US, CN) for phone numbers written without +country.",
        validation_alias="TIERFLOW_IDENTITY_PHONE_REGION",
    )
    suppression_key: SecretStr = Field(
        default=SecretStr(""),
        description="HMAC key for erased-identifier digests; set it in production, never change.",
        validation_alias="TIERFLOW_IDENTITY_SUPPRESSION_KEY",
    )
    cache_size: int = Field(
        default=200_000,
        ge=0,
        description="Identifier→OneID answers kept in memory (0 disables the cache).",
        validation_alias="TIERFLOW_IDENTITY_CACHE_SIZE",
    )
    scoring_url: str = Field(
        default="http://127.0.0.1:8082",
        description="Scoring's read API, for tier and scores in the profile API.",
        validation_alias="TIERFLOW_IDENTITY_SCORING_URL",
    )
