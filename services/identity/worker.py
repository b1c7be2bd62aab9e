"""The identity consumer: raw events in, resolved events and merges out (after the commit)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from aiokafka import ConsumerRecord
from pydantic import ValidationError

from services.identity import metrics, service
from services.identity.repository import mark_published
from services.identity.service import Resolver
from shared.consumer import Records
from shared.contracts import DeadLetter, EventEnvelope, ResolvedEvent, decode
from shared.db import unit_of_work
from shared.deadletters import from_record
from shared.kafka import Publisher
from shared.topics import DEADLETTER, EVENTS_RESOLVED, IDENTITY_MERGES

log = logging.getLogger(__name__)


class IdentityHandler:
    """Handles one poll batch; every output is acknowledged before the offsets are committed."""

    def __init__(self, resolver: Resolver, publisher: Publisher) -> None:
        self._resolver = resolver
        self._publisher = publisher

    async def __call__(self, records: Records) -> None:
        """Decode, resolve in one transaction, publish, then relay the merge outbox."""
        events: list[EventEnvelope] = []
        sources: list[ConsumerRecord[bytes, bytes]] = []
        dead: list[tuple[str, DeadLetter]] = []
        for record in records:
            try:
                events.append(decode(EventEnvelope, record.value or b""))
                sources.append(record)
            except ValidationError as error:
                metrics.RESOLUTIONS.labels("invalid").inc()
                dead.append((_key(record), from_record("identity", record, error)))
        resolution = await self._resolver.resolve(events) if events else None
        resolved: list[tuple[str, ResolvedEvent]] = []
        now = datetime.now(UTC)
        for index, event in enumerate(events):
            oneid = resolution.oneids[index] if resolution else None
            if oneid is None:
                metrics.RESOLUTIONS.labels("no_identifier").inc()
                letter = from_record("identity", sources[index], "no usable identifier")
                dead.append((_key(sources[index]), letter))
                continue
            metrics.RESOLUTIONS.labels("resolved").inc()
            resolved.append((oneid, ResolvedEvent(oneid=oneid, event=event, resolved_at=now)))
        await self._publisher.publish_many(EVENTS_RESOLVED, resolved)
        await self._publisher.publish_many(DEADLETTER, dead)
        await self.relay_merges()

    async def relay_merges(self) -> None:
        """Publish committed merges that are not on the topic yet, then mark them published."""
        async with unit_of_work(self._resolver.sessions) as session:
            merges = await service.pending_merges(session)
            if not merges:
                return
            await self._publisher.publish_many(
                IDENTITY_MERGES, ((merge.absorbed, merge) for merge in merges)
            )
            await mark_published(session, [m.merge_id for m in merges], datetime.now(UTC))


def _key(record: ConsumerRecord[bytes, bytes]) -> str:
    return record.key.decode(errors="replace") if record.key else ""
