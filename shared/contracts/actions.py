"""Touch actions and their outcomes (``tierflow.actions``, keyed by oneid)."""

from __future__ import annotations

from typing import Literal

from shared.contracts.base import Contract, OneId, Timestamp

ActionOutcome = Literal[
    "requested",
    "sent",
    "failed",
    "suppressed",
    "capped",
    "postponed",
    "held_out",
    "dead_lettered",
    "exited",
]


class ActionRecord(Contract):
    """One state of one action; ``action_id`` is its idempotency key (change, playbook, step)."""

    schema_version: Literal[1] = 1
    action_id: str
    oneid: OneId
    tier_change_id: str
    playbook: str
    step: str
    channel: str
    outcome: ActionOutcome
    attempts: int = 0
    status_code: int | None = None
    detail: str | None = None
    at: Timestamp
