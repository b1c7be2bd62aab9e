"""Dead letters: what could not be processed, why, and where it came from."""

from __future__ import annotations

from typing import Literal

from shared.contracts.base import Contract, Timestamp


class Origin(Contract):
    """Where the failed message was read from (absent for HTTP input rejected by ingest)."""

    topic: str
    partition: int
    offset: int


class DeadLetter(Contract):
    """A message that could not be processed, with the error and its origin."""

    schema_version: Literal[1] = 1
    stage: str
    reason: str
    error_type: str
    field: str | None = None
    key: str | None = None
    payload: str
    origin: Origin | None = None
    source_id: str | None = None
    failed_at: Timestamp
