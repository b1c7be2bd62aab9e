"""Pydantic models of every message on every Tierflow topic (the wire contracts)."""

from shared.contracts.actions import ActionOutcome, ActionRecord
from shared.contracts.base import Contract, decode, encode
from shared.contracts.deadletter import DeadLetter, Origin
from shared.contracts.events import EventEnvelope, EventType, ExternalId, ResolvedEvent
from shared.contracts.identity import (
    IDENTITY_NOTICE,
    IdentityErasure,
    IdentityMerge,
    IdentityNotice,
)
from shared.contracts.profiles import Contact, Profile, Scores
from shared.contracts.tiers import (
    Contribution,
    TierChangeCause,
    TierChanged,
    TierChangeEvent,
)

__all__ = [
    "IDENTITY_NOTICE",
    "ActionOutcome",
    "ActionRecord",
    "Contact",
    "Contract",
    "Contribution",
    "DeadLetter",
    "EventEnvelope",
    "EventType",
    "ExternalId",
    "IdentityErasure",
    "IdentityMerge",
    "IdentityNotice",
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
