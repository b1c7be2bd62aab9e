"""Segment Tracking API request bodies, as the analytics SDKs send them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator


def _id_to_str(value: Any) -> Any:
    """SDKs may send numeric ids; Segment treats every id as a string."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value.strip() or None
    return value


def _aware(value: Any) -> Any:
    """Naive timestamps are taken as UTC, as Segment does."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def check_external_ids(context: dict[str, Any]) -> dict[str, Any]:
    """``context.externalIds``, when present, is a list of ``{id, type}`` objects with string
    values: identity keys persons on them, so a malformed one must be refused, not guessed."""
    raw = context.get("externalIds")
    if raw is None:
        return context
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
    return context


Id = Annotated[Annotated[str, Field(max_length=512)] | None, BeforeValidator(_id_to_str)]
Timestamp = Annotated[datetime | None, BeforeValidator(_aware)]
Object = dict[str, Any]


class SegmentCall(BaseModel):
    """Fields common to every call; unknown top-level fields are ignored like Segment does."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, str_max_length=8192)

    user_id: Id = Field(default=None, alias="userId")
    anonymous_id: Id = Field(default=None, alias="anonymousId")
    message_id: Id = Field(default=None, alias="messageId")
    timestamp: Timestamp = None
    original_timestamp: Timestamp = Field(default=None, alias="originalTimestamp")
    sent_at: Timestamp = Field(default=None, alias="sentAt")
    context: Annotated[Object, AfterValidator(check_external_ids)] = Field(default_factory=dict)
    integrations: Object = Field(default_factory=dict)
    properties: Object = Field(default_factory=dict)
    traits: Object = Field(default_factory=dict)
    write_key: str | None = Field(default=None, alias="writeKey", exclude=True)

    @model_validator(mode="after")
    def _one_id_required(self) -> SegmentCall:
        if self.user_id is None and self.anonymous_id is None:
            raise ValueError("userId or anonymousId is required")
        return self


class TrackCall(SegmentCall):
    """``track``: something the person did."""

    type: Literal["track"] = "track"
    event: str = Field(min_length=1, max_length=512)


class IdentifyCall(SegmentCall):
    """``identify``: who the person is and their traits."""

    type: Literal["identify"] = "identify"


class PageCall(SegmentCall):
    """``page``: a web page view."""

    type: Literal["page"] = "page"
    name: str | None = Field(default=None, max_length=512)
    category: str | None = Field(default=None, max_length=512)


class ScreenCall(SegmentCall):
    """``screen``: a mobile screen view."""

    type: Literal["screen"] = "screen"
    name: str | None = Field(default=None, max_length=512)
    category: str | None = Field(default=None, max_length=512)


class GroupCall(SegmentCall):
    """``group``: the person belongs to an account or company."""

    type: Literal["group"] = "group"
    group_id: Id = Field(alias="groupId")

    @model_validator(mode="after")
    def _group_id_required(self) -> GroupCall:
        if self.group_id is None:
            raise ValueError("groupId is required")
        return self


class AliasCall(SegmentCall):
    """``alias``: ``previousId`` and ``userId`` are the same person."""

    type: Literal["alias"] = "alias"
    previous_id: Id = Field(alias="previousId")

    @model_validator(mode="after")
    def _previous_id_required(self) -> AliasCall:
        if self.previous_id is None:
            raise ValueError("previousId is required")
        return self


AnyCall = Annotated[
    TrackCall | IdentifyCall | PageCall | ScreenCall | GroupCall | AliasCall,
    Field(discriminator="type"),
]

CALL_MODELS: dict[str, type[SegmentCall]] = {
    "track": TrackCall,
    "identify": IdentifyCall,
    "page": PageCall,
    "screen": ScreenCall,
    "group": GroupCall,
    "alias": AliasCall,
}


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


EXAMPLES: dict[str, Object] = {
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
