"""Accepting a request's events: rate limit, envelopes, Kafka acks, metrics."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka.errors import KafkaError

from services.ingest import metrics
from services.ingest.envelopes import Invalid, Request, convert
from services.ingest.ratelimit import SourceLimiter
from services.ingest.schemas import CALL_TYPES
from services.ingest.sources import SourceRef
from shared.contracts import DeadLetter, encode
from shared.errors import BadRequest, PayloadTooLarge, RateLimited, Unavailable
from shared.kafka import BatchLanes, send_grouped
from shared.topics import DEADLETTER, EVENTS_RAW

log = logging.getLogger(__name__)


class Acceptor:
    """Publishes accepted envelopes and dead letters; returns only once Kafka acked them all."""

    def __init__(self, producer: Any, *, timeout_s: float, retry_after_s: int) -> None:
        self._producer = producer
        self._lanes = BatchLanes(producer, EVENTS_RAW.name, timeout_s=timeout_s)
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s

    @property
    def producer(self) -> Any:
        """The Kafka producer (readiness checks its metadata)."""
        return self._producer

    async def accept(self, records: list[tuple[bytes, bytes]], rejected: list[DeadLetter]) -> None:
        """Send everything and wait for every ack; any failure is a 503 (the client retries).

        Events share batches with concurrent requests (``BatchLanes``, which also enforces the
        timeout); dead letters are rare and go in batches of their own.
        """
        if not (records or rejected):
            return  # nothing to wait for: not a produce, not in the latency histogram
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if rejected:
                async with asyncio.timeout(self._timeout_s):
                    dead = await send_grouped(
                        self._producer,
                        DEADLETTER.name,
                        [((d.key or "").encode() or None, encode(d)) for d in rejected],
                    )
                    if records:
                        await self._lanes.publish(records)
                    await asyncio.gather(*dead)
            elif records:
                await self._lanes.publish(records)
        except (TimeoutError, KafkaError) as exc:
            log.warning("produce failed: %r", exc)
            metrics.PRODUCE_FAILURES.labels(type(exc).__name__).inc()
            raise Unavailable(
                "the event broker did not acknowledge every event in time; retry "
                "(re-sent events are counted once, by messageId)",
                retry_after=self._retry_after_s,
            ) from exc
        finally:
            metrics.PRODUCE_LATENCY.observe(loop.time() - started)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a request achieved: events accepted and the ones refused."""

    accepted: int
    rejected: list[Invalid]


class Collector:
    """Takes a request's events from parsed JSON to acknowledged Kafka records."""

    def __init__(
        self,
        acceptor: Acceptor,
        limiter: SourceLimiter,
        *,
        max_event_bytes: int,
        max_clock_ahead: timedelta,
    ) -> None:
        self._acceptor = acceptor
        self._limiter = limiter
        self._max_event_bytes = max_event_bytes
        self._max_clock_ahead = max_clock_ahead

    @property
    def acceptor(self) -> Acceptor:
        """Where the records go (readiness checks its producer)."""
        return self._acceptor

    async def collect(
        self,
        source: SourceRef,
        items: list[Any],
        *,
        kind: str | None = None,
        sent_at: datetime | None = None,
        context: dict[str, Any] | None = None,
        integrations: dict[str, Any] | None = None,
    ) -> Outcome:
        """Accept ``items`` for ``source``: a single call (``kind`` given) is all or nothing, a
        batch accepts its valid events and dead-letters the others."""
        try:
            self._limiter.admit(source, len(items))
        except RateLimited:
            for label, count in _kinds(items, kind).items():
                metrics.events(source.name, label, "rate_limited").inc(count)
            raise
        received_at = datetime.now(UTC)
        request = Request(
            source.source_id,
            received_at,
            self._max_event_bytes,
            sent_at,
            context,
            self._max_clock_ahead,
            integrations,
        )
        converted = convert(items, request, kind=kind)
        invalid = converted.invalid
        if invalid and kind is not None:
            bad = invalid[0]
            metrics.rejected(bad.cause).inc()
            metrics.events(source.name, kind, "rejected").inc()
            error = PayloadTooLarge if bad.too_large else BadRequest
            raise error([{"field": bad.field, "reason": bad.reason}])
        try:
            await self._acceptor.accept(
                converted.records, [_dead_letter(bad, source, received_at) for bad in invalid]
            )
        except Unavailable:
            for label, count in converted.accepted.items():
                metrics.events(source.name, label, "unavailable").inc(count)
            raise
        for label, count in converted.accepted.items():
            metrics.events(source.name, label, "accepted").inc(count)
        if converted.ahead:
            metrics.clock_ahead(source.name).inc(converted.ahead)
        if invalid:
            rejected = _kinds([items[bad.index] for bad in invalid], None)
            for label, count in rejected.items():
                metrics.events(source.name, label, "rejected").inc(count)
            for cause, count in Counter(bad.cause for bad in invalid).items():
                metrics.rejected(cause).inc(count)
        return Outcome(len(converted.records), invalid)


def _kinds(items: list[Any], kind: str | None) -> dict[str, int]:
    """Events per type label; a type the API does not know is counted as ``unknown`` so that
    clients cannot mint label values."""
    if kind is not None:
        return {kind: len(items)}
    counts: dict[str, int] = {}
    for item in items:
        given = item.get("type") if isinstance(item, dict) else None
        label = given if isinstance(given, str) and given in CALL_TYPES else "unknown"
        counts[label] = counts.get(label, 0) + 1
    return counts


def _dead_letter(invalid: Invalid, source: SourceRef, at: datetime) -> DeadLetter:
    return DeadLetter(
        stage="ingest",
        reason=invalid.reason,
        error_type="validation",
        field=invalid.field,
        payload=invalid.payload.decode(errors="replace"),
        source_id=source.source_id,
        failed_at=at,
    )
