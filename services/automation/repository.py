"""Every query of the automation schema."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    any_,
    bindparam,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
    values,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, aliased
from sqlalchemy.types import DateTime, Integer, String

from services.automation.models import (
    Action,
    ActionLog,
    CurrentTier,
    Erased,
    Merged,
    StoredContact,
    metadata,
)
from shared.contracts import ActionRecord

SCHEDULED, DELIVERING, SENT, DEAD = "scheduled", "delivering", "sent", "dead_lettered"
EXITED = "exited"
ACTIONS_TABLE = metadata.tables["automation.actions"]
LOG_TABLE = metadata.tables["automation.action_log"]


def one_of(column: InstrumentedAttribute[Any], items: Iterable[Any]) -> ColumnElement[bool]:
    """``column = ANY(:array)``: one bound array, so the statement compiles (and caches) once
    whatever the number of items, unlike an expanding ``IN``."""
    return column == any_(bindparam(None, list(items), type_=ARRAY(column.type)))


async def _among(
    session: AsyncSession, column: InstrumentedAttribute[str], oneids: Iterable[str]
) -> set[str]:
    """Which of these OneIDs ``column`` holds."""
    wanted = list(set(oneids))
    if not wanted:
        return set()
    result = await session.execute(select(column).where(one_of(column, wanted)))
    return set(result.scalars())


async def erased_among(session: AsyncSession, oneids: Iterable[str]) -> set[str]:
    """Which of these persons were erased."""
    return await _among(session, Erased.oneid, oneids)


async def absorbed_among(session: AsyncSession, oneids: Iterable[str]) -> set[str]:
    """Which of these OneIDs were merged into another."""
    return await _among(session, Merged.absorbed, oneids)


async def _lock_each(session: AsyncSession, oneids: Iterable[str], space: int) -> None:
    """A transaction-scoped advisory lock per OneID in key space ``space``, taken in sorted
    order: two transactions locking in one order wait for each other instead of deadlocking."""
    await session.execute(
        text(
            "SELECT pg_advisory_xact_lock(hashtextextended(o, :space)) "
            "FROM unnest(CAST(:ids AS text[])) AS o"
        ),
        {"ids": sorted(set(oneids)), "space": space},
    )


async def lock_identities(session: AsyncSession, oneids: Iterable[str]) -> None:
    """Serialise what an identity notice changes with what plans or stores for the same people,
    until commit: an erasure committed between planning's check and its insert left the erased
    person's steps to be sent. Its own key space, so the dispatcher, which locks rows first and
    persons second, never waits for it."""
    await _lock_each(session, oneids, 11)


MERGES_LOCK = 0x6D65726765  # "merge"
"""The advisory lock every merge takes first (merges are rare; planning never takes it)."""


async def lock_merges(session: AsyncSession) -> None:
    """Serialise merges until commit: the OneID a chain ends in cannot move while one is
    applied. Taken before any identity lock, by merges only, so it closes no cycle."""
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MERGES_LOCK})


MAX_CHAIN = 64
"""Hops followed from an absorbed id to its root; identity's merges never form a cycle, and
this bounds the walk if a corrupted table ever held one."""


async def root_of(session: AsyncSession, oneid: str) -> str:
    """The OneID that ``oneid`` ended up in, following merges applied so far (itself if none)."""
    for _ in range(MAX_CHAIN):
        winner = await session.scalar(select(Merged.winner).where(Merged.absorbed == oneid))
        if winner is None:
            return oneid
        oneid = winner
    return oneid


async def record_merge(session: AsyncSession, absorbed: str, winner: str, at: datetime) -> None:
    """Remember that ``absorbed`` joined ``winner`` (a redelivered notice changes nothing)."""
    await session.execute(
        insert(Merged)
        .values(absorbed=absorbed, winner=winner, merged_at=at)
        .on_conflict_do_nothing(index_elements=[Merged.absorbed])
    )


async def insert_actions(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert planned actions; returns the ids that are new (a redelivered change adds none)."""
    if not rows:
        return set()
    result = await session.execute(
        insert(ACTIONS_TABLE)
        .on_conflict_do_nothing(index_elements=[ACTIONS_TABLE.c.action_id])
        .returning(ACTIONS_TABLE.c.action_id),
        list(rows),
    )
    return set(result.scalars())


async def exit_pending(
    session: AsyncSession, moves: Sequence[tuple[str, str, datetime, int]], now: datetime
) -> list[Action]:
    """The exit rule in SQL: pending steps of a person who moved, after they were planned, to a
    tier other than the one their playbook holds them in, become ``exited``.

    Comparing changes by (time, the person's change sequence) makes it order-safe: a
    redelivered older change exits nothing newer, and a change at the same time as the one
    that planned the steps but later in sequence does exit them (an event dated before an
    inactivity drop and scored after it moves the person back at the drop's time).
    """
    if not moves:
        return []
    moved = values(
        literal_column("oneid", String),
        literal_column("tier", String),
        literal_column("changed_at", DateTime(timezone=True)),
        literal_column("sequence", Integer),
        name="moved",
    ).data(list(moves))
    result = await session.execute(
        update(Action)
        .where(
            Action.oneid == moved.c.oneid,
            Action.status == SCHEDULED,
            Action.sent_at.is_(None),
            Action.hold_tier.is_not(None),
            Action.hold_tier != moved.c.tier,
            tuple_(Action.changed_at, Action.change_sequence)
            < tuple_(moved.c.changed_at, moved.c.sequence),
        )
        .values(status=EXITED, updated_at=now, last_error="left the tier")
        .returning(Action),
        execution_options={"synchronize_session": False},
    )
    return list(result.scalars().unique())


async def record_tiers(
    session: AsyncSession, changes: Sequence[tuple[str, str, datetime, int]]
) -> None:
    """Keep each person's tier as of their latest change (oneid, tier, time, sequence); an older
    change, redelivered, leaves a newer one in place."""
    latest: dict[str, tuple[str, str, datetime, int]] = {}
    for change in changes:
        known = latest.get(change[0])
        if known is None or (known[2], known[3]) < (change[2], change[3]):
            latest[change[0]] = change
    rows = [
        {"oneid": oneid, "tier": tier, "changed_at": at, "change_sequence": sequence}
        for oneid, tier, at, sequence in latest.values()
    ]
    await _keep_newest(session, CurrentTier, rows, ("changed_at", "change_sequence"))


async def current_tiers(
    session: AsyncSession, oneids: Sequence[str]
) -> dict[str, tuple[str, datetime, int]]:
    """The tier, change time and sequence of these people's latest change seen."""
    if not oneids:
        return {}
    result = await session.execute(
        select(
            CurrentTier.oneid, CurrentTier.tier, CurrentTier.changed_at, CurrentTier.change_sequence
        ).where(one_of(CurrentTier.oneid, oneids))
    )
    return {oneid: (tier, at, sequence) for oneid, tier, at, sequence in result.tuples()}


async def record_contacts(
    session: AsyncSession, contacts: Mapping[str, tuple[list[str], str | None, datetime]]
) -> None:
    """Keep each person's latest profile contact (optouts, time zone, profile time); an older
    profile, redelivered, leaves a newer one in place."""
    rows = [
        {"oneid": oneid, "optouts": optouts, "timezone": zone, "updated_at": at}
        for oneid, (optouts, zone, at) in contacts.items()
    ]
    await _keep_newest(session, StoredContact, rows, ("updated_at",))


async def _keep_newest(
    session: AsyncSession,
    model: type[CurrentTier] | type[StoredContact],
    rows: list[dict[str, Any]],
    order: tuple[str, ...],
) -> None:
    """Upsert one row per oneid; a stored row later by the ``order`` columns stays."""
    if not rows:
        return
    table = model.__table__
    statement = insert(model).values(rows)
    stored = tuple_(*(table.c[column] for column in order))
    incoming = tuple_(*(statement.excluded[column] for column in order))
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[table.c.oneid],
            set_={column: statement.excluded[column] for column in rows[0] if column != "oneid"},
            where=stored <= incoming,
        )
    )


async def contacts_of(
    session: AsyncSession, oneids: Sequence[str]
) -> dict[str, tuple[list[str], str | None]]:
    """The stored contact (optouts, time zone) of these people, where one was seen."""
    if not oneids:
        return {}
    result = await session.execute(
        select(StoredContact.oneid, StoredContact.optouts, StoredContact.timezone).where(
            one_of(StoredContact.oneid, oneids)
        )
    )
    return {oneid: (optouts, zone) for oneid, optouts, zone in result.tuples()}


async def pending_persons(
    session: AsyncSession, oneids: Sequence[str]
) -> list[tuple[str, str, dict[str, Any]]]:
    """(action id, oneid, stored person) of these people's steps not yet sent, locked in id
    order (two batches locking in one order wait for each other instead of deadlocking)."""
    if not oneids:
        return []
    result = await session.execute(
        select(Action.action_id, Action.oneid, Action.person)
        .where(one_of(Action.oneid, oneids), Action.status == SCHEDULED, Action.sent_at.is_(None))
        .order_by(Action.action_id)
        .with_for_update()
    )
    return list(result.tuples())


async def append_log(session: AsyncSession, records: Sequence[ActionRecord]) -> None:
    """Store outcomes; they are published on ``tierflow.actions`` from here (the outbox)."""
    if records:
        await session.execute(
            insert(LOG_TABLE),
            [
                {
                    "action_id": r.action_id,
                    "oneid": r.oneid,
                    "outcome": r.outcome,
                    "record": r.model_dump(mode="json"),
                    "published": False,
                }
                for r in records
            ],
        )


async def lock_due(
    session: AsyncSession, now: datetime, limit: int, exclude_channels: Sequence[str]
) -> list[Action]:
    """Lock due actions no other worker holds: scheduled and due, or leased by a worker whose
    lease ran out (it crashed). Skipping locked rows is what keeps workers from double-firing."""
    statement = (
        select(Action)
        .where(
            or_(
                and_(Action.status == SCHEDULED, Action.due_at <= now),
                and_(Action.status == DELIVERING, Action.lease_until < now),
            )
        )
        .order_by(Action.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if exclude_channels:
        statement = statement.where(Action.channel.not_in(list(exclude_channels)))
    result = await session.execute(statement)
    return list(result.scalars())


async def lock_persons(session: AsyncSession, oneids: Sequence[str]) -> None:
    """Serialise cap checks per person across workers until commit."""
    await _lock_each(session, oneids, 7)


async def recent_sends(
    session: AsyncSession, oneids: Sequence[str], since: datetime
) -> dict[tuple[str, str], list[datetime]]:
    """When each person was last sent to, per channel (what frequency caps count)."""
    result = await session.execute(
        select(Action.oneid, Action.channel, Action.sent_at).where(
            one_of(Action.oneid, set(oneids)),
            Action.sent_at >= since,
            Action.status != DEAD,
        )
    )
    sends: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for oneid, channel, sent_at in result:
        if sent_at is not None:
            sends[(oneid, channel)].append(sent_at)
    return sends


async def update_actions(session: AsyncSession, changes: Sequence[dict[str, Any]]) -> None:
    """Bulk update by primary key (each dict holds ``action_id`` and the new values)."""
    grouped: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for change in changes:
        grouped[tuple(sorted(k for k in change if k != "action_id"))].append(change)
    for columns, rows in grouped.items():
        statement = (
            update(ACTIONS_TABLE)
            .where(ACTIONS_TABLE.c.action_id == bindparam("b_action_id"))
            .values({c: bindparam(f"b_{c}") for c in columns})
        )
        await session.execute(statement, [{f"b_{k}": v for k, v in row.items()} for row in rows])


async def lock_leases(session: AsyncSession, action_ids: Sequence[str]) -> dict[str, datetime]:
    """Lock these actions and return the lease of each one still being delivered (an erasure
    may have deleted one meanwhile, and an expired lease lets another claim take it over)."""
    if not action_ids:
        return {}
    result = await session.execute(
        select(Action.action_id, Action.lease_until)
        .where(one_of(Action.action_id, action_ids), Action.status == DELIVERING)
        .with_for_update()
    )
    return {action_id: lease for action_id, lease in result.tuples() if lease is not None}


async def unpublished(session: AsyncSession, limit: int) -> list[ActionLog]:
    """The oldest outbox rows no other worker is publishing."""
    result = await session.execute(
        select(ActionLog)
        .where(ActionLog.published.is_(False))
        .order_by(ActionLog.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(result.scalars())


async def mark_published(session: AsyncSession, ids: Sequence[int]) -> None:
    """The broker acknowledged these outbox rows."""
    await session.execute(
        update(ActionLog).where(ActionLog.id.in_(list(ids))).values(published=True)
    )


async def erase(session: AsyncSession, oneids: Sequence[str], now: datetime) -> int:
    """Delete every action and log row of these persons and remember them as erased."""
    ids = list(set(oneids))
    await session.execute(delete(ActionLog).where(ActionLog.oneid.in_(ids)))
    await session.execute(delete(CurrentTier).where(CurrentTier.oneid.in_(ids)))
    await session.execute(delete(StoredContact).where(StoredContact.oneid.in_(ids)))
    result = await session.execute(
        delete(Action).where(Action.oneid.in_(ids)).returning(Action.action_id)
    )
    await session.execute(
        insert(Erased)
        .values([{"oneid": oneid, "erased_at": now} for oneid in ids])
        .on_conflict_do_nothing(index_elements=[Erased.oneid])
    )
    return len(result.all())


async def merge(
    session: AsyncSession, absorbed: str, winner: str, now: datetime
) -> tuple[int, list[Action]]:
    """Move the absorbed person's actions to the winner; returns (moved, steps exited).

    A pending step held in a tier the winner is not in is exited, and so is one the winner
    already has (same playbook and step) rather than sent twice. Steps never attempted get the
    winner's id in their payload; steps already attempted keep theirs, so a retry carries
    exactly the content of the first try.
    """
    winner_tier = await session.scalar(select(CurrentTier.tier).where(CurrentTier.oneid == winner))
    left: list[Action] = []
    if winner_tier is not None:
        # steps held in a tier the merged person is not in (a win-back of an absorbed id whose
        # winner is an active customer) would be sent to the wrong person now
        left = await _exit_pending_of(
            session,
            absorbed,
            and_(Action.hold_tier.is_not(None), Action.hold_tier != winner_tier),
            f"merged into {winner}, who is in {winner_tier}",
            now,
        )
    await session.execute(delete(CurrentTier).where(CurrentTier.oneid == absorbed))
    await session.execute(delete(StoredContact).where(StoredContact.oneid == absorbed))
    # the winner's same step, pending or sent since the absorbed step was planned (both times
    # automation's clock): a step the winner was sent in an earlier run is no duplicate
    theirs = aliased(Action)
    winner_has_it = (
        select(theirs.action_id)
        .where(
            theirs.oneid == winner,
            theirs.playbook == Action.playbook,
            theirs.step == Action.step,
            or_(
                theirs.status.in_([SCHEDULED, DELIVERING]),
                and_(theirs.status == SENT, theirs.sent_at >= Action.created_at),
            ),
        )
        .exists()
    )
    exited = await _exit_pending_of(
        session, absorbed, winner_has_it, f"duplicate after merge into {winner}", now
    )
    await session.execute(
        update(Action)
        .where(Action.oneid == absorbed, Action.status == SCHEDULED, Action.sent_at.is_(None))
        .values(payload=Action.payload.op("||")(func.jsonb_build_object("oneid", winner)))
        .execution_options(synchronize_session=False)
    )
    moved = await session.execute(
        update(Action)
        .where(Action.oneid == absorbed)
        .values(oneid=winner, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(ActionLog)
        .where(ActionLog.oneid == absorbed)
        .values(oneid=winner)
        .execution_options(synchronize_session=False)
    )
    return moved.rowcount, left + exited  # type: ignore[attr-defined]


async def _exit_pending_of(
    session: AsyncSession, oneid: str, which: ColumnElement[bool], reason: str, now: datetime
) -> list[Action]:
    """Exit the person's steps not yet sent that ``which`` selects, with ``reason``."""
    result = await session.execute(
        update(Action)
        .where(Action.oneid == oneid, Action.status == SCHEDULED, Action.sent_at.is_(None), which)
        .values(status=EXITED, updated_at=now, last_error=reason)
        .returning(Action),
        execution_options={"synchronize_session": False},
    )
    return list(result.scalars())


async def actions_of(session: AsyncSession, oneid: str, limit: int = 200) -> list[Action]:
    """A person's actions, newest first."""
    result = await session.execute(
        select(Action).where(Action.oneid == oneid).order_by(Action.created_at.desc()).limit(limit)
    )
    return list(result.scalars())


async def history_of(session: AsyncSession, oneid: str, limit: int = 1000) -> list[ActionLog]:
    """A person's recorded outcomes, oldest first."""
    result = await session.execute(
        select(ActionLog).where(ActionLog.oneid == oneid).order_by(ActionLog.id).limit(limit)
    )
    return list(result.scalars())


async def dead_letters(session: AsyncSession, limit: int = 200) -> list[Action]:
    """Actions whose retry schedule ran out, newest first."""
    result = await session.execute(
        select(Action).where(Action.status == DEAD).order_by(Action.updated_at.desc()).limit(limit)
    )
    return list(result.scalars())


async def dead_letter_count(session: AsyncSession) -> int:
    """How many actions wait in the dead-letter."""
    result = await session.execute(select(func.count()).where(Action.status == DEAD))
    return int(result.scalar_one())


async def requeue_dead(session: AsyncSession, action_id: str, now: datetime) -> Action | None:
    """Give a dead-lettered action a fresh schedule, due now (an operator's retry)."""
    result = await session.execute(
        update(Action)
        .where(Action.action_id == action_id, Action.status == DEAD)
        .values(status=SCHEDULED, due_at=now, attempts=0, lease_until=None, updated_at=now)
        .returning(Action),
        execution_options={"synchronize_session": False},
    )
    return result.scalar_one_or_none()
