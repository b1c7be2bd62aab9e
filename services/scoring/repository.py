"""Every query of the scoring schema (the profiles read model)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, func, or_, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.scoring.listing import Cursor, MembersQuery
from services.scoring.models import ProfileRow
from shared.contracts import Profile, Scores

PROFILE_KEYS = tuple(Profile.model_fields)
SCORES_KEYS = tuple(Scores.model_fields)


Versioned = tuple[str, int, Profile | None]
"""A person's oneid, the version of the record (its offset plus one), and the profile (None: a
tombstone)."""


async def store_versions(session: AsyncSession, records: Sequence[Versioned]) -> None:
    """Store each person's latest record: a profile, or a tombstone row (an erased or merged
    away person, for good: such an id never gets a profile again).

    Profiles are ordered by ``(updated_at, version)``: a person's evaluation time never goes
    back, and the offset breaks its ties (a late event is evaluated at the time of the one
    before, and a stale copy of that time used to overwrite the newer row). Offsets alone would
    not do: they restart when the topic is re-created or re-partitioned, or when the embedded
    broker starts afresh over a kept database. A tombstone replaces any profile, and nothing
    replaces a tombstone: an older profile committed after it (the previous writer of a
    rebalance) used to bring the erased person back."""
    latest: dict[str, Versioned] = {}
    for record in records:
        held = latest.get(record[0])
        if held is None or record[1] > held[1]:
            latest[record[0]] = record
    if not latest:
        return
    rows = [
        {
            "oneid": oneid,
            "version": version,
            "tier": p.tier if p else None,
            "lifecycle_stage": p.lifecycle_stage if p else None,
            "total": p.scores.total if p else None,
            "profile": p.model_dump(mode="json") if p else None,
            "events_counted": p.events_counted if p else None,
            "updated_at": p.updated_at if p else None,
        }
        for oneid, version, p in latest.values()
    ]
    table = cast(Table, ProfileRow.__table__)
    statement = insert(table)
    excluded = statement.excluded
    # a Core insert on the table, not the ORM entity: one statement compiled once and executed
    # for every row by the driver, without the ORM's per-row bulk-persistence bookkeeping
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[table.c.oneid],
            set_={name: excluded[name] for name in rows[0] if name != "oneid"},
            where=table.c.profile.is_not(None)
            & (
                excluded.profile.is_(None)
                | (
                    tuple_(table.c.updated_at, table.c.version)
                    < tuple_(excluded.updated_at, excluded.version)
                )
            ),
        ),
        rows,
    )


async def get_profile(session: AsyncSession, oneid: str) -> Profile | None:
    """The stored profile of ``oneid``, if any."""
    row = await session.scalar(select(ProfileRow.profile).where(ProfileRow.oneid == oneid))
    return Profile.model_validate(row) if row is not None else None


async def tier_members(
    session: AsyncSession, query: MembersQuery
) -> tuple[list[dict[str, Any]], Cursor | None]:
    """A page of the tier's members (their stored profiles), highest total first, and the cursor
    of the next page (None on the last)."""
    row = ProfileRow
    statement = select(row.profile, row.total, row.oneid).where(row.tier == query.tier)
    if query.stage is not None:
        statement = statement.where(row.lifecycle_stage == query.stage)
    if query.after is not None:
        total, oneid = query.after.total, query.after.oneid
        # "total <= t" bounds the index scan (an OR alone would be a filter over the tier);
        # the rest drops the ties already listed
        statement = statement.where(row.total <= total, or_(row.total < total, row.oneid > oneid))
    statement = statement.order_by(row.total.desc(), row.oneid).limit(query.limit + 1)
    rows = (await session.execute(statement)).all()
    page = rows[: query.limit]
    more = len(rows) > query.limit
    members = [_in_contract_order(r.profile) for r in page]
    return members, Cursor(page[-1].total, page[-1].oneid) if more else None


def _in_contract_order(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored profile with its keys in the contract's order, as ``/v1/scores/{oneid}``
    answers it (JSONB keeps keys by length, then bytes), without validating it again: 1.5 µs
    per member instead of 5.8 (a 1,000-member page took 14 ms)."""
    profile = {key: stored[key] for key in PROFILE_KEYS if key in stored}
    scores = profile.get("scores")
    if isinstance(scores, dict):
        profile["scores"] = {key: scores[key] for key in SCORES_KEYS if key in scores}
    return profile


async def tier_counts(session: AsyncSession) -> dict[str | None, int]:
    """People per tier (None: not in a tier yet)."""
    rows = await session.execute(
        select(ProfileRow.tier, func.count())
        .where(ProfileRow.profile.is_not(None))  # not the tombstones
        .group_by(ProfileRow.tier)
    )
    return dict(rows.tuples().all())
