"""Response bodies of the identity API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class IdentifierOut(BaseModel):
    """One identifier of a person."""

    type: str
    value: str
    first_seen_at: datetime


class PersonOut(BaseModel):
    """A person as the graph knows them; ``oneid`` is the live root of the id asked for."""

    oneid: str
    requested: str
    created_at: datetime
    identifiers: list[IdentifierOut]
    absorbed: list[str]
