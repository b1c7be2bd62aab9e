"""Pydantic models of every message on every Tierflow topic (the wire contracts)."""

from shared.contracts.actions import ActionOutcome, ActionRecord
from shared.contracts.base import Contract, decode, encode
from shared.contracts.deadletter import DeadLetter, Origin
from shared.contracts.events import EventEnvelope, EventType, ExternalId, ResolvedEvent
from shared.contracts.identity import IdentityMerge
from shared.contracts.profiles import Profile, Scores
from shared.contracts.tiers import Contribution, TierChangeCause, TierChanged, TierChangeEvent

__all__ = [
    "ActionOutcome",
    "ActionRecord",
    "Contract",
    "Contribution",
    "DeadLetter",
    "EventEnvelope",
    "EventType",
    "ExternalId",
    "IdentityMerge",
    "Origin",
    "Profile",
    "ResolvedEvent",
    "Scores",
    "TierChangeCause",
    "TierChangeEvent",
    "TierChanged",
    "decode",
    "encode",
]
