"""The identity schema's queries off the batch path: the API, erasure, the outbox relay and
pruning (a poll batch's statements are in :mod:`batch_repository`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    String,
    any_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession

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

TEXTS = ARRAY(String)
Outbox = TypeVar("Outbox", MergeRecord, ErasureRecord)


@dataclass(frozen=True, slots=True)
class PersonState:
    """A person's creation time and liveness."""

    created_at: datetime
    merged_into: str | None
    erased: bool


_PERSONS = text(
    "SELECT oneid, created_at, merged_into, erased_at FROM identity.persons "
    "WHERE oneid = ANY(:oneids)"
).bindparams(bindparam("oneids", type_=TEXTS))


async def load_persons(session: AsyncSession, oneids: Iterable[str]) -> dict[str, PersonState]:
    """Creation time and liveness of persons."""
    wanted = list(set(oneids))
    if not wanted:
        return {}
    rows = await session.execute(_PERSONS, {"oneids": wanted})
    return {
        oneid: PersonState(created_at, merged_into, erased_at is not None)
        for oneid, created_at, merged_into, erased_at in rows
    }


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
    # = ANY(ARRAY(subquery)), not IN (subquery): Postgres plans the IN as a hashed subplan
    # filter over every refusal, the array as one more index scan in the bitmap OR
    values = func.array(
        select(Identifier.id_value).where(Identifier.oneid.in_(oneids)).scalar_subquery()
    )
    await session.execute(
        delete(RefusalRecord).where(
            or_(
                RefusalRecord.kept.in_(oneids),
                RefusalRecord.other.in_(oneids),
                RefusalRecord.id_value == any_(values),
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


async def prune_sightings(session: AsyncSession, before: datetime) -> int:
    """Forget sightings older than the dedup window; returns how many."""
    result = await session.execute(delete(SeenEvent).where(SeenEvent.seen_at < before))
    return int(result.rowcount)  # type: ignore[attr-defined]
