"""Response bodies of the automation API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class ActionOut(BaseModel):
    """One action and where it stands."""

    action_id: str
    playbook: str
    step: str
    channel: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    tier_change_id: str
    created_at: datetime
    updated_at: datetime


class PlaybookOut(BaseModel):
    """A playbook in force."""

    name: str
    description: str
    trigger: dict[str, str | None]
    steps: list[str]
