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
ONEID_LENGTH = 64
OneId = Annotated[str, StringConstraints(min_length=1, max_length=ONEID_LENGTH)]
"""A person's id: identity issues UUIDs; every store keeps up to 64 characters, so a longer one is
refused where it is read (a dead letter), never half-written."""


def usable_oneid(oneid: object) -> bool:
    """Whether ``oneid`` can be a person's id where no contract validates it (a record key, a
    URL path, a cursor): a string of 1 to 64 characters without NUL, which Postgres refuses."""
    return type(oneid) is str and 0 < len(oneid) <= ONEID_LENGTH and "\x00" not in oneid
