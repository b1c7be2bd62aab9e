"""Request and response bodies of the identity API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from shared.contracts import IdentityMerge


class IdentifierOut(BaseModel):
    """One identifier of a person."""

    type: str
    value: str
    first_seen_at: datetime


class TraitOut(BaseModel):
    """A trait and the event time that set it (last write wins)."""

    value: Any
    updated_at: datetime
    event_id: str


class RefusalOut(BaseModel):
    """An identifier an event carried but that was not linked, and the rule that refused it."""

    event_id: str
    rule: str
    type: str
    value: str
    kept: str | None = Field(description="The person the event resolved to.")
    other: str | None = Field(description="The person the identifier belongs to, if any.")
    refused_at: datetime


class ProfileOut(BaseModel):
    """A person's 360° view; ``oneid`` is the live root of the id asked for."""

    oneid: str
    requested: str
    created_at: datetime
    identifiers: list[IdentifierOut]
    traits: dict[str, TraitOut]
    absorbed: list[str]
    merges: list[IdentityMerge]
    refusals: list[RefusalOut]
    scoring: dict[str, Any] | None = Field(
        description="Tier and scores from the scoring read model (null when it has none)."
    )
    scoring_error: str | None = Field(
        default=None, description="Why scoring could not be asked, if it could not."
    )


class ErasureIn(BaseModel):
    """Why a person is erased (kept in the erasure audit)."""

    reason: str = Field(  # no NUL: Postgres refuses it, and that was a 500
        default="data subject request", max_length=500, pattern=r"^[^\x00]*$"
    )


class ErasureOut(BaseModel):
    """What was erased; scoring and automation erase their part on the notice."""

    erasure_id: str
    oneid: str
    oneids: list[str]
    identifiers_removed: int
    notice_published: bool = Field(
        description="False when the broker could not take the notice now: the erasure is done "
        "and its notice waits in the outbox, published within seconds of the broker's return."
    )
