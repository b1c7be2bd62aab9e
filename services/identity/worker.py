"""The identity consumer: raw events in, resolved events and notices out (after the commit)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import ConsumerRecord
from pydantic import ValidationError

from services.identity import metrics
from services.identity.dedup import Sighting
from services.identity.service import RELAY_EVERY_S, NoticeRelay, Resolver
from shared.consumer import Records
from shared.contracts import EventEnvelope, encode
from shared.contracts.events import resolved_json
from shared.deadletters import from_record
from shared.kafka import Publisher, send_grouped
from shared.topics import DEADLETTER, EVENTS_RESOLVED

log = logging.getLogger(__name__)

DECODE_SLICE = 100
"""Records decoded between two yields to the event loop, so that the previous batch's
transaction keeps moving while this one is decoded."""

GC_THRESHOLDS = (50_000, 20, 100)
"""Young-generation collections every 50k allocations instead of 700 (see :func:`tune_gc`)."""

_validate = EventEnvelope.model_validate_json
Sends = list[asyncio.Future[Any]]


@dataclass(slots=True)
class Decoded:
    """A poll batch split into valid events (with where each was read) and dead letters."""

    events: list[EventEnvelope] = field(default_factory=list)
    sources: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    sightings: list[Sighting] = field(default_factory=list)
    dead: list[tuple[bytes | None, bytes]] = field(default_factory=list)


class IdentityHandler:
    """Handles poll batches: decodes one while the previous one's transaction runs.

    A call decodes its batch, waits until the previous batch is resolved and its outputs are
    queued (transactions run one at a time and outputs leave in order), then starts resolving
    this batch and returns an awaitable that completes once the broker acknowledged all its
    outputs. The consumer loop commits the batch's offsets only after that
    (``BatchConsumer(settle_ahead=1)``); a failure surfaces either there or in the next call,
    and either way the loop re-reads from the failed batch.
    """

    def __init__(
        self,
        resolver: Resolver,
        publisher: Publisher,
        relay: NoticeRelay,
        *,
        prune_every_s: float = 300.0,
        relay_every_s: float = RELAY_EVERY_S,
    ) -> None:
        self._resolver = resolver
        self._publisher = publisher
        self._relay = relay
        self._prune_every_s = prune_every_s
        self._pruned_at = time.monotonic()
        self._relay_every_s = relay_every_s
        self._relay_due = 0.0
        self._last: asyncio.Task[Sends] | None = None

    async def __call__(self, records: Records) -> Awaitable[None]:
        """Decode, then resolve after the previous batch; returns the acknowledgement."""
        decoded = await _decode(records)
        previous, self._last = self._last, None
        if previous is not None:
            await previous  # raises if it failed: the loop re-reads from that batch
        task = asyncio.create_task(self._resolve(decoded))
        self._last = task
        return self._acknowledged(task)

    async def _acknowledged(self, task: asyncio.Task[Sends]) -> None:
        try:
            sends = await task
        except Exception:
            if self._last is task:  # reported here: the next call must not report it again
                self._last = None
            raise
        await asyncio.gather(*sends)

    async def _resolve(self, batch: Decoded) -> Sends:
        """Resolve in one transaction, queue the outputs, then relay the notice outbox."""
        outcomes: Counter[str] = Counter(invalid=len(batch.dead))
        resolved: list[tuple[bytes | None, bytes]] = []
        merged = False
        if batch.events:
            resolution = await self._resolver.resolve(batch.events, batch.sightings)
            merged = resolution.merged
            now = datetime.now(UTC)
            sources = batch.sources
            for index, oneid in enumerate(resolution.oneids):
                if oneid is not None:
                    event_json = sources[index].value
                    if names := resolution.withheld.get(index):
                        event_json = without_traits(event_json, names)
                    resolved.append((oneid.encode(), resolved_json(oneid, event_json, now)))
                elif resolution.duplicates[index]:
                    outcomes["duplicate"] += 1
                elif resolution.suppressed[index]:
                    # an erased person's identifier: dropped without a trace of its content
                    outcomes["suppressed"] += 1
                else:
                    outcomes["no_identifier"] += 1
                    letter = from_record("identity", sources[index], "no usable identifier")
                    batch.dead.append((sources[index].key, encode(letter)))
        outcomes["resolved"] = len(resolved)
        producer = self._publisher.producer
        sends = await send_grouped(producer, EVENTS_RESOLVED.name, resolved)
        sends += await send_grouped(producer, DEADLETTER.name, batch.dead)
        for outcome, n in outcomes.items():
            metrics.RESOLUTIONS.labels(outcome).inc(n)
        # merges of this batch go out now; leftovers of a crash (or another worker) on a timer.
        # Neither chore may fail the batch: its events are queued already, and a re-read would
        # publish them twice, while the outbox and the old sightings simply wait for next time.
        if merged or time.monotonic() >= self._relay_due:
            self._relay_due = time.monotonic() + self._relay_every_s
            try:
                await self._relay.relay()
            except Exception:
                self._relay_due = 0.0
                log.exception("relaying identity notices failed; they stay in the outbox")
        if time.monotonic() - self._pruned_at >= self._prune_every_s:
            self._pruned_at = time.monotonic()
            try:
                metrics.SIGHTINGS_PRUNED.inc(await self._resolver.prune_sightings())
            except Exception:
                log.exception("pruning dedup sightings failed; retried in the next period")
        return sends


async def _decode(records: Records) -> Decoded:
    """Validate every record as an event envelope; an invalid one becomes a dead letter."""
    decoded = Decoded()
    for start in range(0, len(records), DECODE_SLICE):
        if start:
            await asyncio.sleep(0)
        for record in records[start : start + DECODE_SLICE]:
            try:
                event = _validate(record.value or b"")
            except ValidationError as error:
                letter = from_record("identity", record, error)
                decoded.dead.append((record.key, encode(letter)))
                continue
            decoded.events.append(event)
            decoded.sources.append(record)
            decoded.sightings.append(Sighting(event.event_id, record.partition, record.offset))
    return decoded


def tune_gc() -> None:
    """Make garbage collection fit a worker that allocates ~10k short-lived objects per poll
    batch and keeps a large identifier cache: with the default thresholds collections took a
    fifth of its CPU. Whatever startup loaded is frozen out of every later collection."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def without_traits(event_json: bytes, names: frozenset[str]) -> bytes:
    """An event's JSON without these traits: an erased email or phone that someone else's
    identify call showed must not reach scoring's state either. Rare, so every other event
    keeps its bytes as they arrived."""
    event = orjson.loads(event_json)
    event["traits"] = {k: v for k, v in (event.get("traits") or {}).items() if k not in names}
    return orjson.dumps(event)
