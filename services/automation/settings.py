"""Automation settings (env prefix ``TIERFLOW_``)."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from services.automation.playbooks import DEFAULT_PLAYBOOKS_PATH
from shared.settings import CommonSettings
from shared.webhooks import SECRET_PREFIX

MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64
"""Standard Webhooks key sizes: ``whsec_`` alone (an empty HMAC key) or a 1-byte key validated,
and anyone could forge the signatures receivers trust."""


class AutomationSettings(CommonSettings):
    """Where automation listens, where webhooks go, and how they are signed and retried."""

    host: str = Field(default="127.0.0.1", validation_alias="TIERFLOW_AUTOMATION_HOST")
    port: int = Field(default=8083, validation_alias="TIERFLOW_AUTOMATION_PORT")
    group_id: str = Field(
        default="tierflow-automation", validation_alias="TIERFLOW_AUTOMATION_GROUP"
    )
    playbooks_path: Path = Field(default=DEFAULT_PLAYBOOKS_PATH)
    webhook_base_url: str = Field(
        default="http://127.0.0.1:8090/hooks",
        description="Deliveries go to <base>/<channel>; the default is the embedded stack's sink.",
    )
    webhook_endpoints: dict[str, str] = Field(
        default_factory=dict,
        description='Per-channel URLs that replace <base>/<channel>, as JSON: {"sms": "https://…"}.',
    )
    webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        description="Signing secrets (whsec_…); several during rotation, the first is newest.",
        min_length=1,
        validation_alias="TIERFLOW_WEBHOOK_SECRET",
    )
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_attempts: int = Field(default=6, ge=1, description="Tries before dead-lettering.")
    webhook_backoff_base_s: float = Field(default=10.0, gt=0, description="First retry delay.")
    webhook_backoff_cap_s: float = Field(default=3600.0, gt=0, description="Longest retry delay.")
    endpoint_concurrency: int = Field(default=16, ge=1, description="In-flight per endpoint.")
    breaker_threshold: int = Field(default=20, ge=1, description="Failures that open a circuit.")
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    delivery_lease_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a claimed action is a worker's before another may take it.",
    )
    admin_token: SecretStr = Field(description="Bearer token of the operator APIs (no default).")

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        """``TIERFLOW_WEBHOOK_SECRET`` may hold several comma-separated secrets."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_secrets")
    @classmethod
    def _whsec(cls, value: list[SecretStr]) -> list[SecretStr]:
        for secret in value:
            raw = secret.get_secret_value()
            if not raw.startswith(SECRET_PREFIX):
                raise ValueError(f"webhook secrets must start with {SECRET_PREFIX}")
            try:  # else every delivery would fail to sign, and be dead-lettered
                key = base64.b64decode(raw.removeprefix(SECRET_PREFIX), validate=True)
            except binascii.Error as exc:
                raise ValueError(f"a webhook secret is not base64 after {SECRET_PREFIX}") from exc
            if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
                raise ValueError(
                    f"TIERFLOW_WEBHOOK_SECRET: a secret holds {len(key)} key bytes after "
                    f"{SECRET_PREFIX}; Standard Webhooks requires {MIN_KEY_BYTES} to "
                    f"{MAX_KEY_BYTES} (e.g. {SECRET_PREFIX}$(openssl rand -base64 32))"
                )
        return value

    @model_validator(mode="after")
    def _lease_outlives_a_request(self) -> AutomationSettings:
        """A lease shorter than a request would let a second worker send while one still is."""
        if self.delivery_lease_s <= self.webhook_timeout_s:
            raise ValueError("delivery_lease_s must be longer than webhook_timeout_s")
        return self
