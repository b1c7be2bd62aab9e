"""Which events of a batch are re-sends of an event already accepted (pure).

Dedup lives in identity: it is the first stage with a transactional store, so the check and the
resolution commit together, and ingest stays a stateless, fast path. An event id is
``uuid5(source, messageId)``. A second sighting of an id at a *different* raw-topic position is a
client re-send (or a producer retry) and is dropped; at the *same* position it is Kafka redelivering
a batch this worker did not commit, and it is forwarded again (scoring ignores ids it counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class Sighting:
    """Where an event was read: raw-topic partition and offset."""

    event_id: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class FirstSighting:
    """The stored first sighting of an event id."""

    partition: int
    offset: int
    seen_at: datetime


def find_duplicates(
    sightings: list[Sighting],
    known: dict[str, FirstSighting],
    *,
    now: datetime,
    window: timedelta,
) -> tuple[list[bool], dict[str, Sighting]]:
    """Flags each sighting that repeats an id first seen elsewhere within ``window``.

    Returns the flags and the first sightings to store (new ids and ids whose record expired).
    """
    fresh = {i: k for i, k in known.items() if now - k.seen_at <= window}
    first: dict[str, Sighting] = {}
    flags: list[bool] = []
    for sighting in sightings:
        stored = fresh.get(sighting.event_id)
        earlier = first.get(sighting.event_id)
        if stored is not None:
            flags.append((stored.partition, stored.offset) != (sighting.partition, sighting.offset))
        elif earlier is not None:
            flags.append(earlier != sighting)
        else:
            first[sighting.event_id] = sighting
            flags.append(False)
    return flags, first
