"""Identity settings (env prefix ``TIERFLOW_``)."""

from __future__ import annotations

from pydantic import Field, SecretStr

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
