"""Every query of the scoring schema (the profiles read model)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.scoring.models import ProfileRow
from shared.contracts import Profile


async def upsert_profiles(session: AsyncSession, profiles: Sequence[Profile]) -> None:
    """Store the latest profile of each person; an older profile never replaces a newer one
    (redelivery, or two workers' messages during a rebalance)."""
    latest: dict[str, Profile] = {}
    for profile in profiles:
        held = latest.get(profile.oneid)
        if held is None or profile.updated_at >= held.updated_at:
            latest[profile.oneid] = profile
    if not latest:
        return
    rows = [
        {
            "oneid": p.oneid,
            "tier": p.tier,
            "lifecycle_stage": p.lifecycle_stage,
            "total": p.scores.total,
            "profile": p.model_dump(mode="json"),
            "events_counted": p.events_counted,
            "updated_at": p.updated_at,
        }
        for p in latest.values()
    ]
    table = cast(Table, ProfileRow.__table__)
    statement = insert(table)
    excluded = statement.excluded
    # a Core insert on the table, not the ORM entity: one statement compiled once and executed
    # for every row by the driver, without the ORM's per-row bulk-persistence bookkeeping
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[table.c.oneid],
            set_={
                "tier": excluded.tier,
                "lifecycle_stage": excluded.lifecycle_stage,
                "total": excluded.total,
                "profile": excluded.profile,
                "events_counted": excluded.events_counted,
                "updated_at": excluded.updated_at,
            },
            where=table.c.updated_at <= excluded.updated_at,
        ),
        rows,
    )


async def delete_profiles(session: AsyncSession, oneids: Sequence[str]) -> None:
    """Forget people (erased, or merged into someone else)."""
    if oneids:
        await session.execute(delete(ProfileRow).where(ProfileRow.oneid.in_(oneids)))


async def get_profile(session: AsyncSession, oneid: str) -> Profile | None:
    """The stored profile of ``oneid``, if any."""
    row = await session.scalar(select(ProfileRow.profile).where(ProfileRow.oneid == oneid))
    return Profile.model_validate(row) if row is not None else None
