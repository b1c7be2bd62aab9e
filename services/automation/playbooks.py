"""Playbooks as data (YAML, validated) and the pure choice of what a tier change triggers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.contracts import TierChangeEvent

DEFAULT_PLAYBOOKS_PATH = Path(__file__).with_name("default_playbooks.yaml")
ACTION_NAMESPACE = uuid.UUID("9d1c6b52-0f3e-4c1a-8f7e-2b4a6d8c0e13")

Channel = Literal["email", "sms", "crm_task", "coupon", "webhook"]


class Strict(BaseModel):
    """Playbook files are operator input: unknown keys are typos and are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Trigger(Strict):
    """Fires on entering ``entered`` (optionally only when coming ``from_tier``)."""

    entered: str
    from_tier: str | None = None


class Step(Strict):
    """Send ``content`` to a channel endpoint."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    channel: Channel
    content: dict[str, Any] = Field(default_factory=dict)


class Playbook(Strict):
    """What a tier change triggers."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str = ""
    trigger: Trigger
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_steps(self) -> Playbook:
        names = [step.name for step in self.steps]
        if len(names) != len(set(names)):
            raise ValueError(f"playbook {self.name}: step names must be unique")
        return self


class PlaybookSet(Strict):
    """Every playbook in force."""

    playbooks: list[Playbook]

    @model_validator(mode="after")
    def _unique_names(self) -> PlaybookSet:
        names = [p.name for p in self.playbooks]
        if len(names) != len(set(names)):
            raise ValueError("playbook names must be unique")
        return self


def load_playbooks(path: Path = DEFAULT_PLAYBOOKS_PATH) -> PlaybookSet:
    """Read and validate a playbook file."""
    return PlaybookSet.model_validate(yaml.safe_load(path.read_text()))


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """One step to perform for one tier change; ``action_id`` is its idempotency key."""

    action_id: str
    playbook: str
    step: Step


def action_id(tier_change_id: str, playbook: str, step: str) -> str:
    """The same (tier change, playbook, step) always gets the same id, on any worker."""
    return str(uuid.uuid5(ACTION_NAMESPACE, f"{tier_change_id}\x1f{playbook}\x1f{step}"))


def plan_actions(change: TierChangeEvent, playbooks: PlaybookSet) -> list[PlannedAction]:
    """Every step of every playbook this change triggers, in file order."""
    data = change.data
    planned: list[PlannedAction] = []
    for playbook in playbooks.playbooks:
        trigger = playbook.trigger
        if trigger.entered != data.to_tier:
            continue
        if trigger.from_tier is not None and trigger.from_tier != data.from_tier:
            continue
        planned.extend(
            PlannedAction(action_id(change.id, playbook.name, step.name), playbook.name, step)
            for step in playbook.steps
        )
    return planned
