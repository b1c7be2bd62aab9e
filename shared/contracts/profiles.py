"""Scored profiles (``tierflow.profiles``, compacted, keyed by oneid)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.contracts.base import Contract, OneId, Timestamp


class Scores(Contract):
    """The scores a tier is decided on, as of ``Profile.updated_at``."""

    value: float = 0.0
    engagement: float = 0.0
    fit: float = 0.0
    total: float = 0.0


class Contact(Contract):
    """How the person may be contacted, from their latest traits (identify calls): automation
    guards every send with it. (Fields in the order Postgres's jsonb keeps them, so a stored
    profile reads back in the contract's order.)"""

    optouts: list[str] = Field(
        default_factory=list,
        description="Channels refused: ``<channel>`` for each trait ``unsubscribed_<channel>: "
        "true``, and ``do_not_contact`` for the trait ``do_not_contact: true`` (every channel).",
    )
    timezone: str | None = Field(
        default=None, description="The ``timezone`` trait (IANA name): quiet hours are local."
    )


class Profile(Contract):
    """The latest scored state of one person."""

    schema_version: Literal[1] = 1
    oneid: OneId
    tier: str | None
    tier_since: Timestamp | None = None
    lifecycle_stage: str
    scores: Scores
    tags: list[str] = Field(default_factory=list)
    events_counted: int
    last_event_at: Timestamp | None = None
    model_version: str
    updated_at: Timestamp
    contact: Contact = Field(default_factory=Contact)
