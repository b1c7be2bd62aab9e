"""Response bodies of the automation API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class ActionOut(BaseModel):
    """One action and where it stands."""

    action_id: str
    oneid: str
    playbook: str
    step: str
    channel: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    tier_change_id: str
    due_at: datetime
    sent_at: datetime | None
    created_at: datetime
    updated_at: datetime


class OutcomeOut(BaseModel):
    """One recorded outcome of an action (requested, sent, failed, postponed, ...)."""

    action_id: str
    outcome: str
    record: dict[str, Any]


class PersonActionsOut(BaseModel):
    """A person's actions and their full outcome history."""

    oneid: str
    actions: list[ActionOut]
    history: list[OutcomeOut]


class PlaybookOut(BaseModel):
    """A playbook in force, as written in its file."""

    name: str
    description: str
    trigger: dict[str, Any]
    exit_on_leave: bool
    steps: list[dict[str, Any]]
