"""Segment Tracking API request bodies, as the analytics SDKs send them.

The calls are TypedDicts validated by one ``TypeAdapter`` per request: pydantic-core checks every
event of a batch in a single call and returns plain dicts, with no model instances and no
Python-level validators (the few rules it cannot express are applied by ``envelopes``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Required

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    InstanceOf,
    StringConstraints,
    TypeAdapter,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

Id = Annotated[
    str | None,
    Field(coerce_numbers_to_str=True),
    StringConstraints(strip_whitespace=True, max_length=512),
]
"""SDKs may send numeric ids; Segment treats every id as a string. Blank means absent."""

Name = Annotated[str | None, Field(max_length=512)]
Object = InstanceOf[dict[str, Any]]
"""A JSON object, checked but not copied: the envelope re-serialises it as it came."""


@with_config(ConfigDict(str_max_length=8192, extra="ignore"))
class SegmentCall(TypedDict, total=False):
    """Fields common to every call; unknown top-level fields are ignored like Segment does.

    ``userId`` or ``anonymousId`` is required, naive timestamps are UTC and
    ``context.externalIds`` must be well formed: ``envelopes`` checks those after validation.
    """

    user_id: Annotated[Id, Field(alias="userId")]
    anonymous_id: Annotated[Id, Field(alias="anonymousId")]
    message_id: Annotated[Id, Field(alias="messageId")]
    timestamp: datetime | None
    original_timestamp: Annotated[datetime | None, Field(alias="originalTimestamp")]
    sent_at: Annotated[datetime | None, Field(alias="sentAt")]
    context: Object
    integrations: Object
    properties: Object
    traits: Object


class TrackCall(SegmentCall, total=False):
    """``track``: something the person did."""

    type: Required[Literal["track"]]
    event: Required[Annotated[str, Field(min_length=1, max_length=512)]]


class IdentifyCall(SegmentCall, total=False):
    """``identify``: who the person is and their traits."""

    type: Required[Literal["identify"]]


class PageCall(SegmentCall, total=False):
    """``page``: a web page view."""

    type: Required[Literal["page"]]
    name: Name
    category: Name


class ScreenCall(SegmentCall, total=False):
    """``screen``: a mobile screen view."""

    type: Required[Literal["screen"]]
    name: Name
    category: Name


class GroupCall(SegmentCall, total=False):
    """``group``: the person belongs to an account or company (``groupId`` may not be blank)."""

    type: Required[Literal["group"]]
    group_id: Required[Annotated[Id, Field(alias="groupId")]]


class AliasCall(SegmentCall, total=False):
    """``alias``: ``previousId`` and ``userId`` are the same person."""

    type: Required[Literal["alias"]]
    previous_id: Required[Annotated[Id, Field(alias="previousId")]]


AnyCall = Annotated[
    TrackCall | IdentifyCall | PageCall | ScreenCall | GroupCall | AliasCall,
    Field(discriminator="type"),
]

CALL_TYPES: dict[str, type[SegmentCall]] = {
    "track": TrackCall,
    "identify": IdentifyCall,
    "page": PageCall,
    "screen": ScreenCall,
    "group": GroupCall,
    "alias": AliasCall,
}

CALLS: TypeAdapter[list[Any]] = TypeAdapter(list[AnyCall])
"""Validates a list of calls, each by its ``type``, in one pydantic-core pass."""


OPENAPI_REFS = "#/components/schemas/{model}"


def call_schema(kind: str) -> dict[str, Any]:
    """The JSON schema of one call on its own route, where ``type`` may be left out; nested
    models are ``$defs`` referenced as OpenAPI components."""
    schema = TypeAdapter(CALL_TYPES[kind]).json_schema(by_alias=True, ref_template=OPENAPI_REFS)
    required = [name for name in schema.get("required", []) if name != "type"]
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)
    return schema


def check_external_ids(context: dict[str, Any]) -> None:
    """``context.externalIds``, when present, is a list of ``{id, type}`` objects with string
    values: identity keys persons on them, so a malformed one must be refused, not guessed."""
    raw = context.get("externalIds")
    if raw is None:
        return
    if not isinstance(raw, list):
        raise ValueError("context.externalIds must be a list")
    for n, item in enumerate(raw):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("id"), str)
            and isinstance(item.get("type"), str)
            and item["id"].strip()
            and item["type"].strip()
        ):
            raise ValueError(f"context.externalIds[{n}] needs non-empty string 'id' and 'type'")
        for optional in ("collection", "encoding"):
            if not isinstance(item.get(optional), str | None):
                raise ValueError(f"context.externalIds[{n}].{optional} must be a string")


class Rejection(BaseModel):
    """Why one event of a batch was refused (it is also in the dead-letter topic)."""

    index: int
    field: str | None
    reason: str


class IngestResponse(BaseModel):
    """Segment answers ``{"success": true}``; Tierflow adds what it accepted and refused."""

    success: bool = True
    accepted: int
    rejected: list[Rejection] = Field(default_factory=list)


EXAMPLES: dict[str, dict[str, Any]] = {
    "track": {
        "userId": "u-1842",
        "event": "Webinar Attended",
        "properties": {"webinar": "pricing-101"},
        "context": {"externalIds": [{"id": "oFx1-unionid", "type": "wechat_unionid"}]},
        "timestamp": "2026-11-23T09:30:00Z",
    },
    "identify": {"userId": "u-1842", "traits": {"email": "Ada@Example.com", "plan": "pro"}},
    "page": {"anonymousId": "a-77", "name": "Pricing", "properties": {"path": "/pricing"}},
    "screen": {"userId": "u-1842", "name": "Dashboard"},
    "group": {"userId": "u-1842", "groupId": "acme", "traits": {"employees": 420}},
    "alias": {"userId": "u-1842", "previousId": "a-77"},
}
