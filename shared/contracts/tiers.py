"""Tier changes, published as CloudEvents 1.0 (structured mode, JSON)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.contracts.base import Contract, OneId, Timestamp
from shared.contracts.profiles import Contact, Scores

TIER_CHANGED_TYPE: Literal["com.tierflow.tier.changed"] = "com.tierflow.tier.changed"
TIER_CHANGED_SOURCE = "/tierflow/scoring"
TIER_CHANGED_SCHEMA = "https://tierflow.dev/schemas/tierflow.tiers.changes.json"


class Contribution(Contract):
    """One rule's share of the move: how many points (after decay) it gained or lost since the
    person's previous tier change."""

    rule: str
    points: float


class TierChangeCause(Contract):
    """What triggered the evaluation: an event (with its id) or the inactivity timer."""

    kind: Literal["event", "timer", "merge"]
    event_id: str | None = None


class TierChanged(Contract):
    """The CloudEvent ``data``: from, to, scores, reasons, the model version and the cause."""

    oneid: OneId
    from_tier: str | None
    to_tier: str
    lifecycle_stage: str
    from_stage: str | None = Field(
        default=None,
        description="The stage before this change. A change with from_tier == to_tier is a "
        "lifecycle-stage change within the tier.",
    )
    scores: Scores
    tags: list[str] = Field(default_factory=list)
    contributions: list[Contribution] = Field(default_factory=list)
    model_version: str
    cause: TierChangeCause
    changed_at: Timestamp
    contact: Contact = Field(default_factory=Contact)
    sequence: int = Field(
        default=0,
        ge=0,
        description="The person's change count at this change: orders two changes of one time "
        "(an event dated before an inactivity drop, scored after it, moves back at the drop's "
        "time).",
    )


class TierChangeEvent(Contract):
    """A CloudEvents 1.0 envelope; ``id`` is deterministic and serves as an idempotency key."""

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=64)
    source: str = TIER_CHANGED_SOURCE
    type: Literal["com.tierflow.tier.changed"] = TIER_CHANGED_TYPE
    subject: OneId = Field(description="The oneid.")
    time: Timestamp
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str = Field(default=TIER_CHANGED_SCHEMA, min_length=1)
    data: TierChanged
