"""Base model and the one JSON codec used for every message on the wire."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict


class Contract(BaseModel):
    """A message on a topic: immutable, tolerant of fields added by newer producers."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


M = TypeVar("M", bound="Contract")


def encode(message: Contract) -> bytes:
    """Serialise a contract to the JSON bytes put on Kafka."""
    return message.model_dump_json(by_alias=True).encode()


def decode(model: type[M], raw: bytes | str) -> M:
    """Parse and validate JSON bytes from Kafka as ``model`` (raises pydantic.ValidationError)."""
    return model.model_validate_json(raw)


JsonObject = dict[str, Any]
Timestamp = AwareDatetime
