"""Playbooks as data (YAML, validated) and the pure choice of what a tier change triggers.

A playbook file holds the guards that apply to every send (caps, quiet hours, holdouts) and the
playbooks: a trigger, a list of steps (send, wait, branch) and an exit rule.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import available_timezones

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from shared.contracts import TierChanged, TierChangeEvent

DEFAULT_PLAYBOOKS_PATH = Path(__file__).with_name("default_playbooks.yaml")
ACTION_NAMESPACE = uuid.UUID("9d1c6b52-0f3e-4c1a-8f7e-2b4a6d8c0e13")

Channel = Literal["email", "sms", "crm_task", "coupon", "webhook"]
CHANNELS: tuple[Channel, ...] = ("email", "sms", "crm_task", "coupon", "webhook")
NAME = r"^[a-z0-9_]+$"
NAME_LENGTH = 64
"""The columns that store playbook, step and tier names hold this many characters: a longer
name validated, then failed every insert of the change that triggered it."""
Name = Annotated[str, Field(pattern=NAME, max_length=NAME_LENGTH)]
TierName = Annotated[str, Field(min_length=1, max_length=NAME_LENGTH)]
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = timedelta(days=3650)
"""The longest wait, path of waits through a playbook, and frequency cap window: ten years. A
step is due at the handling time plus the waits before it and a cap counts back from now, so a
longer value validated and then overflowed ``datetime`` while planning or guarding."""


def _too_long(value: object) -> str:
    return f"{value} is longer than the {MAX_DURATION.days} days a duration may last"


def parse_duration(value: object) -> object:
    """``"3d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"2w"``; other forms go to pydantic as is.

    Longer than ``MAX_DURATION`` is a ValueError here, before ``timedelta`` itself can overflow.
    """
    if isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = int(match[1]) * _UNITS[match[2]]
        if seconds > MAX_DURATION.total_seconds():
            raise ValueError(_too_long(value.strip()))
        return timedelta(seconds=seconds)
    return value


def _at_most_max_duration(value: timedelta) -> timedelta:
    """The same bound for durations pydantic parsed itself (seconds, ISO 8601)."""
    if value > MAX_DURATION:
        raise ValueError(_too_long(value))
    return value


Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), AfterValidator(_at_most_max_duration)
]


class Strict(BaseModel):
    """Playbook files are operator input: unknown keys are typos and are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Trigger(Strict):
    """Exactly one of: ``entered: T``, ``exited: T``, ``from: A`` + ``to: B``, ``stage: S``."""

    entered: TierName | None = None
    exited: TierName | None = None
    from_tier: TierName | None = Field(default=None, alias="from")
    to_tier: TierName | None = Field(default=None, alias="to")
    stage: TierName | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Trigger:
        transition = self.from_tier is not None or self.to_tier is not None
        if transition and (self.from_tier is None or self.to_tier is None):
            raise ValueError("a transition trigger needs both 'from' and 'to'")
        if transition and self.from_tier == self.to_tier:
            # from == to only happens on a stage change within the tier: use a stage trigger
            raise ValueError("a transition trigger needs 'from' and 'to' to differ")
        kinds = [self.entered is not None, self.exited is not None, transition, bool(self.stage)]
        if sum(kinds) != 1:
            raise ValueError("a trigger is one of: entered, exited, from+to, stage")
        return self

    def matches(self, change: TierChanged) -> bool:
        """Whether this change fires the trigger."""
        if self.entered is not None:
            return change.to_tier == self.entered and change.from_tier != self.entered
        if self.exited is not None:
            return change.from_tier == self.exited and change.to_tier != self.exited
        if self.stage is not None:
            # entering the stage, whether or not the tier moved with it
            return change.lifecycle_stage == self.stage and change.from_stage != self.stage
        return change.from_tier == self.from_tier and change.to_tier == self.to_tier

    def hold_tier(self) -> str | None:
        """The tier a person must stay in for the remaining steps (exit rule), if any."""
        return self.entered if self.entered is not None else self.to_tier


class Condition(Strict):
    """What a branch tests on the tier change; every given clause must hold."""

    tag: str | None = None
    not_tag: str | None = None
    stage: str | None = None
    tier: str | None = None
    from_tier: str | None = Field(default=None, alias="from")
    score_at_least: dict[Literal["value", "engagement", "fit", "total"], float] = Field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        if not self.model_dump(exclude_defaults=True):
            raise ValueError("a condition needs at least one clause")
        return self

    def holds(self, change: TierChanged) -> bool:
        """Evaluate on the data the tier change carries."""
        scores = change.scores.model_dump()
        return (
            (self.tag is None or self.tag in change.tags)
            and (self.not_tag is None or self.not_tag not in change.tags)
            and (self.stage is None or change.lifecycle_stage == self.stage)
            and (self.tier is None or change.to_tier == self.tier)
            and (self.from_tier is None or change.from_tier == self.from_tier)
            and all(scores[name] >= floor for name, floor in self.score_at_least.items())
        )


class SendStep(Strict):
    """Send ``content`` to the channel's endpoint; ``send`` names the step (idempotency key)."""

    send: Name
    channel: Channel
    content: dict[str, Any] = Field(default_factory=dict)


class WaitStep(Strict):
    """Delay the steps after it."""

    wait: Duration

    @field_validator("wait")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("a wait must be positive")
        return value


class BranchStep(Strict):
    """Continue with ``then`` when ``when`` holds, else with ``else``."""

    branch: Name
    when: Condition
    then: list[Step] = Field(default_factory=list)
    otherwise: list[Step] = Field(default_factory=list, alias="else")


def _step_kind(value: object) -> str:
    keys = value if isinstance(value, dict) else vars(value)
    return next((kind for kind in ("send", "wait", "branch") if kind in keys), "send")


Step = Annotated[
    Annotated[SendStep, Tag("send")]
    | Annotated[WaitStep, Tag("wait")]
    | Annotated[BranchStep, Tag("branch")],
    Discriminator(_step_kind),
]


def longest_wait(steps: list[Step]) -> timedelta:
    """The most the waits can add up to before a step: every wait, and the longer side of
    each branch (which side runs is only known from the change)."""
    total = timedelta(0)
    for step in steps:
        if isinstance(step, WaitStep):
            total += step.wait
        elif isinstance(step, BranchStep):
            total += max(longest_wait(step.then), longest_wait(step.otherwise))
    return total


def send_names(steps: list[Step]) -> list[str]:
    """Every send step's name, branches included, in file order."""
    names: list[str] = []
    for step in steps:
        if isinstance(step, SendStep):
            names.append(step.send)
        elif isinstance(step, BranchStep):
            names.extend(send_names(step.then) + send_names(step.otherwise))
    return names


class Playbook(Strict):
    """What a tier change triggers; with ``exit_on_leave`` a person who leaves the trigger's
    tier drops out of the steps not yet sent."""

    name: Name
    description: str = ""
    trigger: Trigger
    exit_on_leave: bool = True
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_steps(self) -> Playbook:
        names = send_names(self.steps)
        if not names:
            raise ValueError(f"playbook {self.name}: no send step")
        if len(names) != len(set(names)):
            raise ValueError(f"playbook {self.name}: send step names must be unique")
        return self

    @model_validator(mode="after")
    def _bounded_waits(self) -> Playbook:
        longest = longest_wait(self.steps)
        if longest > MAX_DURATION:
            raise ValueError(
                f"playbook {self.name}: its waits add up to {longest}, longer than the "
                f"{MAX_DURATION.days} days a playbook may last"
            )
        return self


class FrequencyCap(Strict):
    """At most ``max`` sends per person on one channel within ``per``, across all playbooks."""

    max: int = Field(ge=1)
    per: Duration

    @field_validator("per")
    @classmethod
    def _positive_window(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("a frequency cap's window must be positive (0 turned the cap off)")
        return value


class QuietHours(Strict):
    """No sends on ``channels`` between ``start`` and ``end`` in the person's local time."""

    start: time
    end: time
    channels: list[Channel] = Field(default_factory=lambda: list[Channel](["sms"]))


class Holdout(Strict):
    """``shares[tier]`` of each tier's people get no action (recorded as held out)."""

    salt: str = "tierflow-holdout-v1"
    shares: dict[str, float] = Field(default_factory=dict)

    @field_validator("shares")
    @classmethod
    def _fractions(cls, value: dict[str, float]) -> dict[str, float]:
        if any(not 0 <= share <= 1 for share in value.values()):
            raise ValueError("holdout shares are fractions between 0 and 1")
        return value


class Guards(Strict):
    """Rules every send passes, whatever playbook it comes from."""

    frequency_caps: dict[Channel, FrequencyCap] = Field(default_factory=dict)
    quiet_hours: QuietHours | None = None
    holdout: Holdout = Field(default_factory=Holdout)
    default_timezone: str = "UTC"

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value not in available_timezones():
            raise ValueError(f"unknown time zone {value!r}")
        return value


class PlaybookSet(Strict):
    """A playbook file: the guards and every playbook in force."""

    guards: Guards = Field(default_factory=Guards)
    playbooks: list[Playbook]

    @model_validator(mode="after")
    def _unique_names(self) -> PlaybookSet:
        names = [p.name for p in self.playbooks]
        if len(names) != len(set(names)):
            raise ValueError("playbook names must be unique")
        return self

    def by_name(self) -> dict[str, Playbook]:
        """Playbooks keyed by name."""
        return {p.name: p for p in self.playbooks}


def unknown_names(
    playbooks: PlaybookSet,
    tiers: Collection[str],
    stages: Collection[str],
    tags: Collection[str],
) -> list[str]:
    """Each tier, stage or tag a playbook file names that the scoring model does not define.

    Scoring owns those names and automation only reads them off tier changes, so a typo
    (``at_risc``) validates on its own and then silently never fires; this check, run against
    the model (``tierflow playbooks validate --model``), catches it before deployment.
    """
    known = {"tier": set(tiers), "stage": set(stages), "tag": set(tags)}
    found: list[str] = []

    def check(kind: str, name: str | None, where: str) -> None:
        if name is not None and name not in known[kind]:
            defined = ", ".join(sorted(known[kind])) or "none"
            found.append(f"{where} names {kind} {name!r}, which the model lacks ({defined})")

    def walk(steps: list[Step], where: str) -> None:
        for step in steps:
            if isinstance(step, BranchStep):
                here, when = f"{where} branch {step.branch}", step.when
                check("tier", when.tier, here)
                check("tier", when.from_tier, here)
                check("stage", when.stage, here)
                check("tag", when.tag, here)
                check("tag", when.not_tag, here)
                walk(step.then, where)
                walk(step.otherwise, where)

    for playbook in playbooks.playbooks:
        where, trigger = f"playbook {playbook.name}", playbook.trigger
        for tier in (trigger.entered, trigger.exited, trigger.from_tier, trigger.to_tier):
            check("tier", tier, f"{where} trigger")
        check("stage", trigger.stage, f"{where} trigger")
        walk(playbook.steps, where)
    for tier in playbooks.guards.holdout.shares:
        check("tier", tier, "guards holdout")
    return found


def load_playbooks(path: Path = DEFAULT_PLAYBOOKS_PATH) -> PlaybookSet:
    """Read and validate a playbook file (``tierflow playbooks validate`` calls this)."""
    return PlaybookSet.model_validate(yaml.safe_load(path.read_text()))


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """One send for one tier change: ``action_id`` is its idempotency key, ``delay`` counts from
    the moment the change is handled, ``hold_tier`` is the tier the person must stay in."""

    action_id: str
    playbook: str
    step: SendStep
    delay: timedelta
    hold_tier: str | None


def action_id(tier_change_id: str, playbook: str, step: str) -> str:
    """The same (tier change, playbook, step) always gets the same id, on any worker."""
    return str(uuid.uuid5(ACTION_NAMESPACE, f"{tier_change_id}\x1f{playbook}\x1f{step}"))


def _walk(
    steps: list[Step], change: TierChanged, offset: timedelta
) -> tuple[list[tuple[SendStep, timedelta]], timedelta]:
    """Flatten steps into (send step, delay) pairs; branches are decided on the change."""
    sends: list[tuple[SendStep, timedelta]] = []
    for step in steps:
        if isinstance(step, WaitStep):
            offset += step.wait
        elif isinstance(step, SendStep):
            sends.append((step, offset))
        else:
            chosen = step.then if step.when.holds(change) else step.otherwise
            nested, offset = _walk(chosen, change, offset)
            sends.extend(nested)
    return sends, offset


def plan_actions(change: TierChangeEvent, playbooks: PlaybookSet) -> list[PlannedAction]:
    """Every send of every playbook this change triggers, in file order."""
    planned: list[PlannedAction] = []
    for playbook in playbooks.playbooks:
        if not playbook.trigger.matches(change.data):
            continue
        hold = playbook.trigger.hold_tier() if playbook.exit_on_leave else None
        sends, _ = _walk(playbook.steps, change.data, timedelta(0))
        planned.extend(
            PlannedAction(
                action_id(change.id, playbook.name, step.send), playbook.name, step, delay, hold
            )
            for step, delay in sends
        )
    return planned


def leaves(hold_tier: str | None, new_tier: str) -> bool:
    """The exit rule: a pending step drops out when its person moves to another tier."""
    return hold_tier is not None and hold_tier != new_tier


BranchStep.model_rebuild()
