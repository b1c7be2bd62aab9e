"""Identity settings (env prefix ``TIERFLOW_``)."""

from __future__ import annotations

from pathlib import Path

import phonenumbers
from pydantic import Field, SecretStr, field_validator

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

    @field_validator("phone_region")
    @classmethod
    def _known_region(cls, value: str | None) -> str | None:
        """A region phonenumbers does not know (``cn``, ``UK``) would silently drop every
        phone written without +country: refuse it at start instead."""
        if value is None or not value.strip():
            return None
        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {value!r} (ISO 3166 alpha-2, e.g. US, CN)")
        return region
