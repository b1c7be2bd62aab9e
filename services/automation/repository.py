"""Every query of the automation schema."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.automation.models import Action

REQUESTED, DELIVERING, SENT, DEAD = "requested", "delivering", "sent", "dead_lettered"


async def record_requested(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Insert planned actions; an action that already exists (redelivery) is left as it is."""
    if rows:
        statement = insert(Action).values(
            [{**row, "status": REQUESTED, "attempts": 0} for row in rows]
        )
        await session.execute(statement.on_conflict_do_nothing(index_elements=[Action.action_id]))


async def claim(
    session: AsyncSession, action_ids: Sequence[str] | None, *, lease: timedelta, now: datetime
) -> list[Action]:
    """Mark actions as being delivered by this worker: requested ones, or ones whose
    delivery lease expired (a crashed worker). ``None`` claims any such action (the sweeper)."""
    condition = or_(
        Action.status == REQUESTED,
        (Action.status == DELIVERING) & (Action.updated_at < now - lease),
    )
    target = select(Action.action_id).where(condition)
    if action_ids is not None:
        target = target.where(Action.action_id.in_(action_ids))
    else:
        target = target.where(Action.updated_at < now - lease).limit(200)
    result = await session.execute(
        update(Action)
        .where(Action.action_id.in_(target.with_for_update(skip_locked=True).scalar_subquery()))
        .values(status=DELIVERING, updated_at=now)
        .returning(Action)
    )
    return list(result.scalars())


async def finish(
    session: AsyncSession,
    action_id: str,
    *,
    status: str,
    attempts: int,
    status_code: int | None,
    error: str | None,
) -> None:
    """Record the outcome of a delivery."""
    await session.execute(
        update(Action)
        .where(Action.action_id == action_id)
        .values(
            status=status,
            attempts=Action.attempts + attempts,
            last_status_code=status_code,
            last_error=error,
            updated_at=func.now(),
        )
    )


async def actions_of(session: AsyncSession, oneid: str, limit: int = 200) -> list[Action]:
    """A person's actions, newest first."""
    result = await session.execute(
        select(Action).where(Action.oneid == oneid).order_by(Action.created_at.desc()).limit(limit)
    )
    return list(result.scalars())
