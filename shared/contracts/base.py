"""Base model and the one JSON codec used for every message on the wire."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints


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
OneId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
"""A person's id: identity issues UUIDs; every store keeps up to 64 characters, so a longer one is
refused where it is read (a dead letter), never half-written."""
