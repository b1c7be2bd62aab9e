"""Which events of a batch are re-sends of an event already accepted (pure).

Dedup lives in identity: it is the first stage with a transactional store, so the check and the
resolution commit together, and ingest stays a stateless, fast path. An event id is
``uuid5(source, messageId)``. A second sighting of an id at a *different* raw-topic position is a
client re-send (or a producer retry) and is dropped; at the *same* position it is Kafka redelivering
a batch this worker did not commit, and it is forwarded again (scoring ignores ids it counted).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple


class Sighting(NamedTuple):
    """Where an event was read: raw-topic partition and offset (a tuple: one is made per event,
    and a frozen dataclass cost several times as much to build)."""

    event_id: str
    partition: int
    offset: int


class FirstSighting(NamedTuple):
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
) -> list[bool]:
    """Flags each sighting that repeats an id first seen elsewhere within ``window``.

    ``known`` holds the stored first sightings from before this batch. What the batch stores
    itself is each id's first sighting in it, when the id is new or its record expired (see
    :func:`services.identity.batch_repository.open_batch`).
    """
    first: dict[str, Sighting] = {}
    flags: list[bool] = []
    for sighting in sightings:
        stored = known.get(sighting.event_id)
        if stored is not None and now - stored.seen_at <= window:
            flags.append((stored.partition, stored.offset) != (sighting.partition, sighting.offset))
            continue
        earlier = first.setdefault(sighting.event_id, sighting)
        flags.append(earlier is not sighting and earlier != sighting)
    return flags
