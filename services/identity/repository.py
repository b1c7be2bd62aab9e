"""Every query of the identity schema."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    String,
    bindparam,
    delete,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, Insert, insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.dedup import FirstSighting, Sighting
from services.identity.models import (
    ErasureRecord,
    Identifier,
    MergeRecord,
    Person,
    RefusalRecord,
    SeenEvent,
    Suppression,
    Trait,
)
from services.identity.rules import IdentifierKey, Refusal

TEXTS = ARRAY(String)
Outbox = TypeVar("Outbox", MergeRecord, ErasureRecord)


@dataclass(frozen=True, slots=True)
class PersonState:
    """What a cached identifier→OneID answer is checked against."""

    created_at: datetime
    merged_into: str | None
    erased: bool


# The statements a batch runs take whole arrays as single parameters: one cached statement and
# one round trip whatever the batch size (multi-row VALUES and IN lists were compiled anew for
# every batch, which cost more than the database work).
_LINKS = text(
    "SELECT i.id_type, i.id_value, i.oneid, p.created_at "
    "FROM unnest(:types, :values) AS k(id_type, id_value) "
    "JOIN identity.identifiers i ON i.id_type = k.id_type AND i.id_value = k.id_value "
    "JOIN identity.persons p ON p.oneid = i.oneid"
).bindparams(bindparam("types", type_=TEXTS), bindparam("values", type_=TEXTS))
_PERSONS = text(
    "SELECT oneid, created_at, merged_into, erased_at FROM identity.persons "
    "WHERE oneid = ANY(:oneids)"
).bindparams(bindparam("oneids", type_=TEXTS))
_COUNTS = text(
    "SELECT oneid, id_type, count(*) FROM identity.identifiers WHERE oneid = ANY(:oneids) "
    "GROUP BY oneid, id_type"
).bindparams(bindparam("oneids", type_=TEXTS))
_SUPPRESSED = text(
    "SELECT id_hash FROM identity.suppressions WHERE id_hash = ANY(:digests)"
).bindparams(bindparam("digests", type_=TEXTS))
_INSERT_LINKS = text(
    "INSERT INTO identity.identifiers (id_type, id_value, oneid, first_seen_at) "
    "SELECT t, v, o, :seen_at FROM unnest(:types, :values, :oneids) AS k(t, v, o)"
).bindparams(
    bindparam("types", type_=TEXTS),
    bindparam("values", type_=TEXTS),
    bindparam("oneids", type_=TEXTS),
)
_INSERT_PERSONS = text(
    "INSERT INTO identity.persons (oneid, created_at) SELECT * FROM unnest(:oneids, :created)"
).bindparams(
    bindparam("oneids", type_=TEXTS), bindparam("created", type_=ARRAY(DateTime(timezone=True)))
)
_SIGHTINGS = text(
    "SELECT event_id, raw_partition, raw_offset, seen_at FROM identity.seen_events "
    "WHERE event_id = ANY(:ids)"
).bindparams(bindparam("ids", type_=TEXTS))
_RECORD_SIGHTINGS = text(
    "INSERT INTO identity.seen_events (event_id, raw_partition, raw_offset, seen_at) "
    "SELECT e, p, o, :seen_at FROM unnest(:ids, :partitions, :offsets) AS s(e, p, o) "
    "ON CONFLICT (event_id) DO UPDATE SET raw_partition = excluded.raw_partition, "
    "raw_offset = excluded.raw_offset, seen_at = excluded.seen_at"
).bindparams(
    bindparam("ids", type_=TEXTS),
    bindparam("partitions", type_=ARRAY(Integer)),
    bindparam("offsets", type_=ARRAY(BigInteger)),
)


async def load_links(
    session: AsyncSession, keys: Iterable[IdentifierKey]
) -> tuple[dict[IdentifierKey, str], dict[str, datetime]]:
    """Which live person owns each identifier, and when each of those persons was created."""
    wanted = list(set(keys))
    if not wanted:
        return {}, {}
    rows = await session.execute(
        _LINKS, {"types": [t for t, _ in wanted], "values": [v for _, v in wanted]}
    )
    links: dict[IdentifierKey, str] = {}
    created: dict[str, datetime] = {}
    for id_type, id_value, oneid, created_at in rows:
        links[(id_type, id_value)] = oneid
        created[oneid] = created_at
    return links, created


async def load_persons(session: AsyncSession, oneids: Iterable[str]) -> dict[str, PersonState]:
    """Creation time and liveness of persons (validates cached answers inside the transaction)."""
    wanted = list(set(oneids))
    if not wanted:
        return {}
    rows = await session.execute(_PERSONS, {"oneids": wanted})
    return {
        oneid: PersonState(created_at, merged_into, erased_at is not None)
        for oneid, created_at, merged_into, erased_at in rows
    }


async def load_counts(session: AsyncSession, oneids: Iterable[str]) -> dict[str, Counter[str]]:
    """How many identifiers of each type every given person holds."""
    wanted = list(set(oneids))
    counts: dict[str, Counter[str]] = {oneid: Counter() for oneid in wanted}
    if wanted:
        for oneid, id_type, n in await session.execute(_COUNTS, {"oneids": wanted}):
            counts[oneid][id_type] = n
    return counts


async def suppressed(session: AsyncSession, digests: Iterable[str]) -> set[str]:
    """Which identifier digests belong to erased persons."""
    wanted = list(set(digests))
    if not wanted:
        return set()
    return set((await session.execute(_SUPPRESSED, {"digests": wanted})).scalars())


async def insert_persons(session: AsyncSession, persons: dict[str, datetime]) -> None:
    """Create new persons."""
    if persons:
        await session.execute(
            _INSERT_PERSONS,
            {"oneids": list(persons), "created": list(persons.values())},
        )


async def insert_links(
    session: AsyncSession, links: dict[IdentifierKey, str], seen_at: datetime
) -> None:
    """Attach new identifiers; a concurrent insert of the same identifier raises (and retries)."""
    if links:
        await session.execute(
            _INSERT_LINKS,
            {
                "types": [t for t, _ in links],
                "values": [v for _, v in links],
                "oneids": list(links.values()),
                "seen_at": seen_at,
            },
        )


async def apply_merge(
    session: AsyncSession,
    *,
    merge_id: str,
    winner: str,
    absorbed: str,
    cause_event_id: str,
    rule: str,
    at: datetime,
) -> None:
    """Move the absorbed person's identifiers, traits and absorbed persons to the winner; audit.

    Traits merge by event time: the winner keeps a trait unless the absorbed person's is newer.
    """
    await session.execute(
        update(Identifier).where(Identifier.oneid == absorbed).values(oneid=winner)
    )
    await session.execute(
        update(Person).where(Person.merged_into == absorbed).values(merged_into=winner)
    )
    await session.execute(
        update(Person).where(Person.oneid == absorbed).values(merged_into=winner, merged_at=at)
    )
    moved = insert(Trait).from_select(
        ["oneid", "name", "value", "updated_at", "event_id"],
        select(
            literal(winner, String),
            Trait.name,
            Trait.value,
            Trait.updated_at,
            Trait.event_id,
        ).where(Trait.oneid == absorbed),
    )
    await session.execute(_later_trait_wins(moved, ties_keep_stored=True))
    await session.execute(delete(Trait).where(Trait.oneid == absorbed))
    await session.execute(
        insert(MergeRecord).values(
            merge_id=merge_id,
            winner=winner,
            absorbed=absorbed,
            cause_event_id=cause_event_id,
            rule=rule,
            merged_at=at,
        )
    )


async def insert_refusals(
    session: AsyncSession,
    refusals: list[tuple[Refusal, str, str | None]],
    at: datetime,
) -> None:
    """Audit refused identifiers: (refusal, cause event id, person the event resolved to)."""
    if refusals:
        await session.execute(
            insert(RefusalRecord),
            [
                {
                    "event_id": event_id,
                    "rule": refusal.rule,
                    "id_type": refusal.key[0],
                    "id_value": refusal.key[1],
                    "kept": kept,
                    "other": refusal.other,
                    "refused_at": at,
                }
                for refusal, event_id, kept in refusals
            ],
        )


async def upsert_traits(
    session: AsyncSession, traits: dict[tuple[str, str], tuple[Any, datetime, str]]
) -> None:
    """(oneid, name) → (value, event time, event id); an older event never overwrites a newer."""
    if not traits:
        return
    statement = insert(Trait).values(
        [
            {"oneid": oneid, "name": name, "value": value, "updated_at": at, "event_id": event_id}
            for (oneid, name), (value, at, event_id) in traits.items()
        ]
    )
    await session.execute(_later_trait_wins(statement, ties_keep_stored=False))


def _later_trait_wins(statement: Insert, *, ties_keep_stored: bool) -> Insert:
    """An upsert of traits where the value with the later event time wins; on a tie the stored
    one stays (a merge) or the incoming one replaces it (a new identify)."""
    incoming = statement.excluded
    later = (
        Trait.updated_at < incoming.updated_at
        if ties_keep_stored
        else Trait.updated_at <= incoming.updated_at
    )
    return statement.on_conflict_do_update(
        index_elements=[Trait.oneid, Trait.name],
        set_={
            "value": incoming.value,
            "updated_at": incoming.updated_at,
            "event_id": incoming.event_id,
        },
        where=later,
    )


async def claim_unpublished_merges(session: AsyncSession, limit: int = 500) -> list[MergeRecord]:
    """Merges committed but not yet published (locked so one worker publishes each)."""
    return await _claim_unpublished(session, MergeRecord, MergeRecord.merged_at, limit)


async def claim_unpublished_erasures(
    session: AsyncSession, limit: int = 100
) -> list[ErasureRecord]:
    """Erasures committed but not yet published (locked so one worker publishes each)."""
    return await _claim_unpublished(session, ErasureRecord, ErasureRecord.requested_at, limit)


async def _claim_unpublished(
    session: AsyncSession, outbox: type[Outbox], order: Any, limit: int
) -> list[Outbox]:
    result = await session.execute(
        select(outbox)
        .where(outbox.published_at.is_(None))
        .order_by(order)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(result.scalars())


async def mark_published(
    session: AsyncSession, merge_ids: list[str], erasure_ids: list[str], at: datetime
) -> None:
    """Record that these merges and erasures are on the notices topic."""
    if merge_ids:
        await session.execute(
            update(MergeRecord).where(MergeRecord.merge_id.in_(merge_ids)).values(published_at=at)
        )
    if erasure_ids:
        await session.execute(
            update(ErasureRecord)
            .where(ErasureRecord.erasure_id.in_(erasure_ids))
            .values(published_at=at)
        )


async def resolve_oneid(session: AsyncSession, oneid: str) -> str | None:
    """The live root of a OneID (itself if never absorbed); None if unknown or erased."""
    person = await session.get(Person, oneid)
    if person is None or person.erased_at is not None:
        return None
    return person.merged_into or person.oneid


async def absorbed_by(session: AsyncSession, root: str) -> list[str]:
    """Every OneID merged into ``root`` (merges repoint chains, so one level is all)."""
    rows = await session.execute(select(Person.oneid).where(Person.merged_into == root))
    return list(rows.scalars())


async def identifiers_of_person(session: AsyncSession, oneid: str) -> list[Identifier]:
    """A person's identifiers, oldest first."""
    rows = await session.execute(
        select(Identifier).where(Identifier.oneid == oneid).order_by(Identifier.first_seen_at)
    )
    return list(rows.scalars())


async def traits_of(session: AsyncSession, oneid: str) -> list[Trait]:
    """A person's traits, by name."""
    rows = await session.execute(select(Trait).where(Trait.oneid == oneid).order_by(Trait.name))
    return list(rows.scalars())


async def merges_involving(session: AsyncSession, oneids: list[str]) -> list[MergeRecord]:
    """The merge audit of these persons, oldest first."""
    rows = await session.execute(
        select(MergeRecord)
        .where(or_(MergeRecord.winner.in_(oneids), MergeRecord.absorbed.in_(oneids)))
        .order_by(MergeRecord.merged_at)
    )
    return list(rows.scalars())


async def refusals_involving(session: AsyncSession, oneids: list[str]) -> list[RefusalRecord]:
    """Refused identifiers that would have grown or merged these persons, newest first."""
    rows = await session.execute(
        select(RefusalRecord)
        .where(or_(RefusalRecord.kept.in_(oneids), RefusalRecord.other.in_(oneids)))
        .order_by(RefusalRecord.refused_at.desc())
        .limit(200)
    )
    return list(rows.scalars())


async def recent_merges(session: AsyncSession, limit: int) -> list[MergeRecord]:
    """The latest merges."""
    rows = await session.execute(
        select(MergeRecord).order_by(MergeRecord.merged_at.desc()).limit(limit)
    )
    return list(rows.scalars())


async def owner_of(session: AsyncSession, id_type: str, id_value: str) -> str | None:
    """The OneID owning one identifier."""
    found = await session.get(Identifier, (id_type, id_value))
    return found.oneid if found else None


async def erase(
    session: AsyncSession,
    *,
    erasure_id: str,
    root: str,
    oneids: list[str],
    digests: list[str],
    reason: str,
    at: datetime,
) -> None:
    """Delete every raw identifier and trait of these persons, keep only digests to suppress
    them, mark the persons erased and queue the erasure notice (outbox)."""
    values = select(Identifier.id_value).where(Identifier.oneid.in_(oneids))
    await session.execute(
        delete(RefusalRecord).where(
            or_(
                RefusalRecord.kept.in_(oneids),
                RefusalRecord.other.in_(oneids),
                RefusalRecord.id_value.in_(values),
            )
        )
    )
    await session.execute(delete(Identifier).where(Identifier.oneid.in_(oneids)))
    await session.execute(delete(Trait).where(Trait.oneid.in_(oneids)))
    await session.execute(update(Person).where(Person.oneid.in_(oneids)).values(erased_at=at))
    if digests:
        await session.execute(
            insert(Suppression)
            .values([{"id_hash": d, "erasure_id": erasure_id, "created_at": at} for d in digests])
            .on_conflict_do_nothing()
        )
    await session.execute(
        insert(ErasureRecord).values(
            erasure_id=erasure_id,
            oneid=root,
            oneids=oneids,
            reason=reason,
            requested_at=at,
        )
    )


async def load_sightings(session: AsyncSession, event_ids: list[str]) -> dict[str, FirstSighting]:
    """Stored first sightings of these event ids."""
    if not event_ids:
        return {}
    rows = await session.execute(_SIGHTINGS, {"ids": list(set(event_ids))})
    return {
        event_id: FirstSighting(partition, offset, seen_at)
        for event_id, partition, offset, seen_at in rows
    }


async def record_sightings(
    session: AsyncSession, sightings: dict[str, Sighting], seen_at: datetime
) -> None:
    """Store first sightings, replacing records that fell out of the window."""
    if sightings:
        await session.execute(
            _RECORD_SIGHTINGS,
            {
                "ids": list(sightings),
                "partitions": [s.partition for s in sightings.values()],
                "offsets": [s.offset for s in sightings.values()],
                "seen_at": seen_at,
            },
        )


async def prune_sightings(session: AsyncSession, before: datetime) -> int:
    """Forget sightings older than the dedup window; returns how many."""
    result = await session.execute(delete(SeenEvent).where(SeenEvent.seen_at < before))
    return int(result.rowcount)  # type: ignore[attr-defined]
