"""The identity consumer: raw events in, resolved events and notices out (after the commit)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import UTC, datetime

from aiokafka import ConsumerRecord
from pydantic import ValidationError

from services.identity import metrics
from services.identity.dedup import Sighting
from services.identity.service import NoticeRelay, Resolver
from shared.consumer import Records
from shared.contracts import DeadLetter, EventEnvelope, decode
from shared.contracts.events import resolved_json
from shared.deadletters import from_record
from shared.kafka import Publisher
from shared.topics import DEADLETTER, EVENTS_RESOLVED

log = logging.getLogger(__name__)


class IdentityHandler:
    """Handles one poll batch; every output is acknowledged before the offsets are committed."""

    def __init__(
        self,
        resolver: Resolver,
        publisher: Publisher,
        relay: NoticeRelay,
        *,
        prune_every_s: float = 300.0,
        relay_every_s: float = 5.0,
    ) -> None:
        self._resolver = resolver
        self._publisher = publisher
        self._relay = relay
        self._prune_every_s = prune_every_s
        self._pruned_at = time.monotonic()
        self._relay_every_s = relay_every_s
        self._relay_due = 0.0

    async def __call__(self, records: Records) -> None:
        """Decode, resolve in one transaction, publish, then relay the notice outbox."""
        events: list[EventEnvelope] = []
        sources: list[ConsumerRecord[bytes, bytes]] = []
        dead: list[tuple[str, DeadLetter]] = []
        sightings: list[Sighting] = []
        for record in records:
            try:
                event = decode(EventEnvelope, record.value or b"")
            except ValidationError as error:
                dead.append((_key(record), from_record("identity", record, error)))
                continue
            events.append(event)
            sources.append(record)
            sightings.append(Sighting(event.event_id, record.partition, record.offset))
        resolution = await self._resolver.resolve(events, sightings) if events else None
        resolved: list[tuple[str, bytes]] = []
        outcomes: Counter[str] = Counter(invalid=len(dead))
        now = datetime.now(UTC)
        for index in range(len(events)):
            assert resolution is not None
            if resolution.duplicates[index]:
                outcomes["duplicate"] += 1
                continue
            if resolution.suppressed[index]:
                # an erased person's identifier: dropped without a trace of its content
                outcomes["suppressed"] += 1
                continue
            oneid = resolution.oneids[index]
            if oneid is None:
                outcomes["no_identifier"] += 1
                letter = from_record("identity", sources[index], "no usable identifier")
                dead.append((_key(sources[index]), letter))
                continue
            outcomes["resolved"] += 1
            resolved.append((oneid, resolved_json(oneid, sources[index].value or b"", now)))
        await self._publisher.publish_encoded(EVENTS_RESOLVED, resolved)
        await self._publisher.publish_many(DEADLETTER, dead)
        for outcome, n in outcomes.items():
            metrics.RESOLUTIONS.labels(outcome).inc(n)
        # merges of this batch go out now; leftovers of a crash (or another worker) on a timer
        if (resolution and resolution.merged) or time.monotonic() >= self._relay_due:
            self._relay_due = time.monotonic() + self._relay_every_s
            await self._relay.relay()
        if time.monotonic() - self._pruned_at >= self._prune_every_s:
            self._pruned_at = time.monotonic()
            metrics.SIGHTINGS_PRUNED.inc(await self._resolver.prune_sightings())


def _key(record: ConsumerRecord[bytes, bytes]) -> str:
    return record.key.decode(errors="replace") if record.key else ""
