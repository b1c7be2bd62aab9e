"""Automation settings (env prefix ``TIERFLOW_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from services.automation.playbooks import DEFAULT_PLAYBOOKS_PATH
from shared.settings import CommonSettings
from shared.webhooks import SECRET_PREFIX


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
    webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        description="Signing secrets (whsec_…); several during rotation, the first is newest.",
        min_length=1,
        validation_alias="TIERFLOW_WEBHOOK_SECRET",
    )
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_attempts: int = Field(default=4, ge=1, description="Tries before dead-lettering.")
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
            if not secret.get_secret_value().startswith(SECRET_PREFIX):
                raise ValueError(f"webhook secrets must start with {SECRET_PREFIX}")
        return value
