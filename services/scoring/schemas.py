"""What scoring reads: its view of a resolved event, and its own commands on
``tierflow.scoring.commands``, keyed by the person they apply to.

The commands carry work from one partition to another (a merge folds the absorbed person's state
into the winner's, its late events follow, an erasure reaches every merged id) and let the timer
hand a re-evaluation to the agent, which is the only writer of the table.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.contracts.base import Contract, JsonObject, OneId, Timestamp
from shared.contracts.events import EventType


class ScoredEnvelope(Contract):
    """The fields of an ``EventEnvelope`` the model reads, validated as the contract does."""

    schema_version: Literal[1] = 1
    event_id: str
    type: EventType
    event: str | None = None
    properties: JsonObject = Field(default_factory=dict)
    traits: JsonObject = Field(default_factory=dict)
    timestamp: Timestamp
    received_at: Timestamp


class ScoredEvent(Contract):
    """A ``ResolvedEvent`` as scoring reads it. Decoding only what the model uses leaves the
    rest unvalidated (context, integrations, ids): with a browser's context that is 4.7 instead
    of 8.2 µs per event. A record the full contract refuses for a field read here is refused
    the same way (a dead letter); the contract tests check both agree."""

    schema_version: Literal[1] = 1
    oneid: OneId
    event: ScoredEnvelope


class Command(BaseModel):
    """Immutable, strict: only scoring writes these."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Fold(Command):
    """Fold ``state`` (the absorbed person's) into ``winner``; ``fold_id`` dedups redelivery."""

    kind: Literal["fold"] = "fold"
    fold_id: str
    winner: str
    absorbed: str
    state: dict[str, Any]


class Forward(Command):
    """A late event of ``absorbed``, to be scored as ``winner``'s own: applied to the winner's
    state like any event (its daily caps, its remembered ids), exactly as if it had carried the
    winner's id. Folding a one-event state instead gave it its full points past a cap the
    winner had reached that day."""

    kind: Literal["forward"] = "forward"
    winner: str
    absorbed: str
    event: ScoredEvent


class Erase(Command):
    """Delete everything held about ``oneid`` (one of the ids of an erasure)."""

    kind: Literal["erase"] = "erase"
    erasure_id: str
    oneid: str


class Reevaluate(Command):
    """The person's next-evaluation ``deadline`` has passed: re-decide their tier now."""

    kind: Literal["reevaluate"] = "reevaluate"
    oneid: str
    deadline: float


COMMAND = TypeAdapter(Annotated[Fold | Forward | Erase | Reevaluate, Field(discriminator="kind")])
"""Parses any command: ``COMMAND.validate_json(raw)``."""
