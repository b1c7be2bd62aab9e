"""Every query of the identity schema."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.dedup import FirstSighting, Sighting
from services.identity.models import Identifier, MergeRecord, Person, SeenEvent
from services.identity.rules import IdentifierKey


async def load_links(
    session: AsyncSession, keys: Iterable[IdentifierKey]
) -> tuple[dict[IdentifierKey, str], dict[str, datetime]]:
    """Which live person owns each identifier, and when each of those persons was created."""
    wanted = list(set(keys))
    if not wanted:
        return {}, {}
    rows = await session.execute(
        select(Identifier.id_type, Identifier.id_value, Identifier.oneid, Person.created_at)
        .join(Person, Person.oneid == Identifier.oneid)
        .where(tuple_(Identifier.id_type, Identifier.id_value).in_(wanted))
    )
    links: dict[IdentifierKey, str] = {}
    created: dict[str, datetime] = {}
    for id_type, id_value, oneid, created_at in rows:
        links[(id_type, id_value)] = oneid
        created[oneid] = created_at
    return links, created


async def insert_persons(session: AsyncSession, persons: dict[str, datetime]) -> None:
    """Create new persons."""
    if persons:
        await session.execute(
            insert(Person),
            [{"oneid": oneid, "created_at": at} for oneid, at in persons.items()],
        )


async def insert_links(
    session: AsyncSession, links: dict[IdentifierKey, str], seen_at: datetime
) -> None:
    """Attach new identifiers; a concurrent insert of the same identifier raises (and retries)."""
    if links:
        await session.execute(
            insert(Identifier),
            [
                {"id_type": t, "id_value": v, "oneid": oneid, "first_seen_at": seen_at}
                for (t, v), oneid in links.items()
            ],
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
    """Move the absorbed person's identifiers and absorbed persons to the winner; audit it."""
    await session.execute(
        update(Identifier).where(Identifier.oneid == absorbed).values(oneid=winner)
    )
    await session.execute(
        update(Person).where(Person.merged_into == absorbed).values(merged_into=winner)
    )
    await session.execute(
        update(Person).where(Person.oneid == absorbed).values(merged_into=winner, merged_at=at)
    )
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


async def claim_unpublished_merges(session: AsyncSession, limit: int = 500) -> list[MergeRecord]:
    """Merges committed but not yet published (locked so one worker publishes each)."""
    result = await session.execute(
        select(MergeRecord)
        .where(MergeRecord.published_at.is_(None))
        .order_by(MergeRecord.merged_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(result.scalars())


async def mark_published(session: AsyncSession, merge_ids: list[str], at: datetime) -> None:
    """Record that these merges are on the merges topic."""
    if merge_ids:
        await session.execute(
            update(MergeRecord).where(MergeRecord.merge_id.in_(merge_ids)).values(published_at=at)
        )


async def resolve_oneid(session: AsyncSession, oneid: str) -> str | None:
    """The live root of a OneID (itself if never absorbed); None if unknown."""
    person = await session.get(Person, oneid)
    if person is None:
        return None
    return person.merged_into or person.oneid


async def person_view(
    session: AsyncSession, oneid: str
) -> tuple[Person, list[Identifier], list[str]] | None:
    """A live person with their identifiers and the OneIDs they absorbed."""
    root = await resolve_oneid(session, oneid)
    if root is None:
        return None
    person = await session.get(Person, root)
    assert person is not None
    identifiers = await session.execute(
        select(Identifier).where(Identifier.oneid == root).order_by(Identifier.first_seen_at)
    )
    absorbed = await session.execute(select(Person.oneid).where(Person.merged_into == root))
    return person, list(identifiers.scalars()), list(absorbed.scalars())


async def owner_of(session: AsyncSession, id_type: str, id_value: str) -> str | None:
    """The OneID owning one identifier."""
    found = await session.get(Identifier, (id_type, id_value))
    return found.oneid if found else None


async def load_sightings(session: AsyncSession, event_ids: list[str]) -> dict[str, FirstSighting]:
    """Stored first sightings of these event ids."""
    if not event_ids:
        return {}
    rows = await session.execute(select(SeenEvent).where(SeenEvent.event_id.in_(set(event_ids))))
    return {
        row.event_id: FirstSighting(row.raw_partition, row.raw_offset, row.seen_at)
        for row in rows.scalars()
    }


async def record_sightings(
    session: AsyncSession, sightings: dict[str, Sighting], seen_at: datetime
) -> None:
    """Store first sightings, replacing records that fell out of the window."""
    if not sightings:
        return
    statement = insert(SeenEvent).values(
        [
            {
                "event_id": s.event_id,
                "raw_partition": s.partition,
                "raw_offset": s.offset,
                "seen_at": seen_at,
            }
            for s in sightings.values()
        ]
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[SeenEvent.event_id],
            set_={
                "raw_partition": statement.excluded.raw_partition,
                "raw_offset": statement.excluded.raw_offset,
                "seen_at": statement.excluded.seen_at,
            },
        )
    )


async def prune_sightings(session: AsyncSession, before: datetime) -> int:
    """Forget sightings older than the dedup window; returns how many."""
    result = await session.execute(delete(SeenEvent).where(SeenEvent.seen_at < before))
    return int(result.rowcount)  # type: ignore[attr-defined]
