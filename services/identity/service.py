"""Resolving a batch of events against the identity graph, safely under concurrency."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.identity import metrics, repository
from services.identity.dedup import Sighting, find_duplicates
from services.identity.rules import identifiers_of, plan_batch
from shared.contracts import EventEnvelope, IdentityMerge
from shared.db import unit_of_work

log = logging.getLogger(__name__)

MERGE_NAMESPACE = uuid.UUID("0b8f6f1e-7a52-4d8e-bc8e-3c2f5d4a9e61")
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "23505"})  # serialization, deadlock, unique


def merge_id(winner: str, absorbed: str) -> str:
    """Deterministic: a redelivered event that re-plans the same merge gets the same id."""
    return str(uuid.uuid5(MERGE_NAMESPACE, f"{winner}\x1f{absorbed}"))


def _retryable(error: DBAPIError) -> bool:
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return code in RETRYABLE_SQLSTATES


@dataclass(frozen=True, slots=True)
class Resolution:
    """Each event's OneID (None: no usable identifier, or a duplicate) and its duplicate flag."""

    oneids: list[str | None]
    duplicates: list[bool]


class Resolver:
    """Resolves poll batches in one SERIALIZABLE transaction each, retried on conflicts.

    Serializable isolation lets Postgres refuse any interleaving of concurrent workers that
    could create two persons for one identifier or lose a merge; the loser simply re-plans.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        dedup_window: timedelta = timedelta(hours=24),
        max_attempts: int = 20,
    ) -> None:
        self._sessions = async_sessionmaker(
            engine.execution_options(isolation_level="SERIALIZABLE"), expire_on_commit=False
        )
        self._dedup_window = dedup_window
        self._max_attempts = max_attempts

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """Serializable sessions on the identity graph."""
        return self._sessions

    async def resolve(self, events: list[EventEnvelope], sightings: list[Sighting]) -> Resolution:
        """Drop re-sent events, then give every other event a OneID, merging as the rules say."""
        for attempt in range(1, self._max_attempts + 1):
            try:
                return await self._attempt(events, sightings)
            except DBAPIError as error:
                if not _retryable(error) or attempt == self._max_attempts:
                    raise
                metrics.CONFLICT_RETRIES.inc()
                await asyncio.sleep(min(0.005 * 2**attempt, 0.5))
        raise AssertionError("unreachable")

    async def _attempt(self, events: list[EventEnvelope], sightings: list[Sighting]) -> Resolution:
        now = datetime.now(UTC)
        async with unit_of_work(self._sessions) as session:
            known = await repository.load_sightings(session, [s.event_id for s in sightings])
            duplicates, first = find_duplicates(
                sightings, known, now=now, window=self._dedup_window
            )
            await repository.record_sightings(session, first, now)
            keyed = [
                ([] if duplicate else identifiers_of(event), event.received_at)
                for event, duplicate in zip(events, duplicates, strict=True)
            ]
            links, created = await repository.load_links(
                session, (key for keys, _ in keyed for key in keys)
            )
            metrics.KNOWN_IDENTIFIERS.inc(len(links))
            plan = plan_batch(keyed, links, created, lambda: str(uuid.uuid4()))
            await repository.insert_persons(session, plan.new_persons)
            await repository.insert_links(session, plan.new_links, now)
            for merge in plan.merges:
                await repository.apply_merge(
                    session,
                    merge_id=merge_id(merge.winner, merge.absorbed),
                    winner=merge.winner,
                    absorbed=merge.absorbed,
                    cause_event_id=events[merge.event_index].event_id,
                    rule=merge.rule,
                    at=now,
                )
        metrics.NEW_PERSONS.inc(len(plan.new_persons))
        metrics.MERGES.labels("shared_identifier").inc(len(plan.merges))
        return Resolution(plan.oneids, duplicates)

    async def prune_sightings(self) -> int:
        """Forget first sightings older than the dedup window."""
        async with unit_of_work(self._sessions) as session:
            return await repository.prune_sightings(session, datetime.now(UTC) - self._dedup_window)


async def pending_merges(session: AsyncSession) -> list[IdentityMerge]:
    """Committed merges not yet on the topic, as contracts (the outbox read)."""
    records = await repository.claim_unpublished_merges(session)
    return [
        IdentityMerge(
            merge_id=r.merge_id,
            winner=r.winner,
            absorbed=r.absorbed,
            cause_event_id=r.cause_event_id,
            rule=r.rule,
            merged_at=r.merged_at,
        )
        for r in records
    ]
