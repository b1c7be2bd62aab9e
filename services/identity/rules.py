"""Identity rules as pure functions: which identifiers an event carries, and how a batch resolves.

No I/O here: the worker loads what the graph already knows, calls :func:`plan_batch`, and
writes the plan back in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from shared.contracts import EventEnvelope

IdentifierKey = tuple[str, str]

BLOCKED_VALUES = frozenset(
    {
        "",
        "null",
        "none",
        "nil",
        "undefined",
        "anonymous",
        "unknown",
        "0",
        "-1",
        "n/a",
        "[object object]",
    }
)


def normalize(id_type: str, value: str) -> str | None:
    """The canonical form of an identifier value, or None when it is junk that must not match."""
    cleaned = value.strip()
    if id_type == "email":
        cleaned = cleaned.lower()
        if "@" not in cleaned:
            return None
    if cleaned.lower() in BLOCKED_VALUES:
        return None
    return cleaned


def identifiers_of(event: EventEnvelope) -> list[IdentifierKey]:
    """Every usable identifier an event shows, in priority order, without duplicates."""
    candidates: list[tuple[str, object]] = [
        ("user_id", event.user_id),
        ("email", event.traits.get("email")),
        *((ext.type.strip().lower(), ext.id) for ext in event.external_ids),
        ("anonymous_id", event.anonymous_id),
        ("anonymous_id", event.previous_id),
    ]
    seen: dict[IdentifierKey, None] = {}
    for id_type, raw in candidates:
        if isinstance(raw, str) and (value := normalize(id_type, raw)) is not None:
            seen.setdefault((id_type, value), None)
    return list(seen)


@dataclass(frozen=True, slots=True)
class Merge:
    """``absorbed`` joins ``winner`` because of the event at ``event_index``."""

    winner: str
    absorbed: str
    event_index: int
    rule: str = "shared_identifier"


@dataclass(slots=True)
class BatchPlan:
    """What a batch does to the graph: new persons and links, merges, and each event's OneID."""

    oneids: list[str | None] = field(default_factory=list)
    new_persons: dict[str, datetime] = field(default_factory=dict)
    new_links: dict[IdentifierKey, str] = field(default_factory=dict)
    merges: list[Merge] = field(default_factory=list)


def plan_batch(
    batch: Iterable[tuple[list[IdentifierKey], datetime]],
    links: dict[IdentifierKey, str],
    created: dict[str, datetime],
    new_oneid: Callable[[], str],
) -> BatchPlan:
    """Resolve events in order against the known graph; the older person wins every merge.

    ``links`` maps identifiers to live OneIDs and ``created`` gives each live person's creation
    time; both are copied, not changed. An event with no usable identifier resolves to None.
    """
    links = dict(links)
    created = dict(created)
    plan = BatchPlan()
    for index, (keys, seen_at) in enumerate(batch):
        owners = sorted({links[k] for k in keys if k in links}, key=lambda o: (created[o], o))
        if not keys:
            plan.oneids.append(None)
            continue
        if owners:
            winner = owners[0]
        else:
            winner = new_oneid()
            created[winner] = seen_at
            plan.new_persons[winner] = seen_at
        for absorbed in owners[1:]:
            plan.merges.append(Merge(winner, absorbed, index))
            for key, owner in links.items():
                if owner == absorbed:
                    links[key] = winner
                    if key in plan.new_links:
                        plan.new_links[key] = winner
        for key in keys:
            if key not in links:
                links[key] = winner
                plan.new_links[key] = winner
        plan.oneids.append(winner)
    return plan
