"""Listing a tier's members from the read model: the query's rules and its cursor (pure).

Members come highest total first (ties by oneid), a page at a time. The cursor is the last
member's (total, oneid): keyset pagination, so a page costs the same however deep it is, and
people who move while a client pages do not shift the pages after them (a person can still be
seen twice, or not at all, if their total crosses the cursor between two requests).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson

from shared.contracts.base import usable_oneid

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: the last member's total and oneid."""

    total: float
    oneid: str

    def encode(self) -> str:
        """Opaque to clients; JSON keeps the float exact."""
        return base64.urlsafe_b64encode(orjson.dumps([self.total, self.oneid])).decode()

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor ``encode`` wrote, or ValueError."""
        try:
            total, oneid = orjson.loads(base64.urlsafe_b64decode(text.encode()))
        except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError):
            total = oneid = None
        if type(total) not in (int, float) or not usable_oneid(oneid):
            raise ValueError("not a cursor this API returned: pass the previous page's next")
        return cls(float(total), oneid)


@dataclass(frozen=True, slots=True)
class MembersQuery:
    """One page of a tier's members, optionally of one lifecycle stage."""

    tier: str
    limit: int = DEFAULT_LIMIT
    after: Cursor | None = None
    stage: str | None = None


@dataclass(frozen=True, slots=True)
class FieldError:
    """A query parameter the API refuses, and why."""

    field: str
    reason: str


def parse_members_query(
    tier: str, params: Mapping[str, str], stages: Sequence[str]
) -> MembersQuery | list[FieldError]:
    """The query for ``GET /v1/tiers/{tier}/members``, or every parameter it refuses."""
    errors: list[FieldError] = []
    limit = DEFAULT_LIMIT
    if "limit" in params:
        raw = params["limit"]
        # at most 4 digits before int(): Python refuses to read more than 4,300 (a 500)
        if (
            not (raw.isascii() and raw.isdigit() and len(raw) <= 4)
            or not 1 <= int(raw) <= MAX_LIMIT
        ):
            errors.append(FieldError("limit", f"must be a whole number from 1 to {MAX_LIMIT}"))
        else:
            limit = int(raw)
    after = None
    if params.get("after"):
        try:
            after = Cursor.decode(params["after"])
        except ValueError as exc:
            errors.append(FieldError("after", str(exc)))
    stage = params.get("stage") or None
    if stage is not None and stage not in stages:
        errors.append(FieldError("stage", f"must be one of {', '.join(stages)}"))
    if errors:
        return errors
    return MembersQuery(tier, limit, after, stage)
