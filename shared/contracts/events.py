"""Event envelopes: what ingest accepts (``events.raw``) and what identity resolves."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import orjson
from pydantic import Field

from shared.contracts.base import Contract, JsonObject, OneId, Timestamp

EventType = Literal["track", "identify", "page", "screen", "group", "alias"]


class ExternalId(Contract):
    """A custom identifier from Segment's ``context.externalIds`` (e.g. a WeChat unionid)."""

    id: str
    type: str
    collection: str | None = None
    encoding: str | None = None


class EventEnvelope(Contract):
    """A validated Segment call as ingest accepted it; ``event_id`` is the dedup key downstream."""

    schema_version: Literal[1] = 1
    event_id: str = Field(description="Stable id derived from source and messageId.")
    message_id: str
    source_id: str
    type: EventType
    user_id: str | None = None
    anonymous_id: str | None = None
    event: str | None = Field(default=None, description="Event name (track).")
    name: str | None = Field(default=None, description="Page or screen name.")
    group_id: str | None = None
    previous_id: str | None = Field(default=None, description="Former id (alias).")
    properties: JsonObject = Field(default_factory=dict)
    traits: JsonObject = Field(default_factory=dict)
    context: JsonObject = Field(default_factory=dict)
    integrations: JsonObject = Field(default_factory=dict)
    external_ids: list[ExternalId] = Field(default_factory=list)
    timestamp: Timestamp = Field(description="When it happened, corrected for client clock skew.")
    original_timestamp: Timestamp | None = None
    sent_at: Timestamp | None = None
    received_at: Timestamp

    @property
    def routing_id(self) -> str:
        """The key on ``events.raw``: userId, else anonymousId (one of them is always set)."""
        return self.user_id or self.anonymous_id or self.previous_id or self.message_id


class ResolvedEvent(Contract):
    """An event plus the OneID identity resolved it to (``events.resolved``, keyed by oneid)."""

    schema_version: Literal[1] = 1
    oneid: OneId
    event: EventEnvelope
    resolved_at: Timestamp


def resolved_json(oneid: str, event_json: bytes, resolved_at: datetime) -> bytes:
    """A ``ResolvedEvent`` as JSON, around the event's JSON exactly as it arrived.

    Identity forwards every event it reads; splicing the validated bytes in, instead of building
    and serialising the model again, saves a fifth of its CPU per event. The result decodes to
    the same ``ResolvedEvent`` (a contract test checks it).
    """
    return b'{"schema_version":1,"oneid":%s,"event":%s,"resolved_at":%s}' % (
        orjson.dumps(oneid),
        event_json,
        orjson.dumps(resolved_at),
    )
