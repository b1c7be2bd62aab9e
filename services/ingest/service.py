"""Turning Segment calls into envelopes (pure) and accepting them durably (Kafka-acked)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from services.ingest import metrics
from services.ingest.schemas import (
    CALL_MODELS,
    AliasCall,
    GroupCall,
    PageCall,
    ScreenCall,
    SegmentCall,
    TrackCall,
)
from shared.contracts import DeadLetter, EventEnvelope, ExternalId, encode
from shared.errors import Unavailable
from shared.kafka import send_grouped
from shared.topics import DEADLETTER, EVENTS_RAW

log = logging.getLogger(__name__)

EVENT_ID_NAMESPACE = uuid.UUID("5c7d3f3e-1f0b-4b7e-9a53-6f1d1c2b7a10")


_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes


def derive_event_id(source_id: str, message_id: str) -> str:
    """A stable id for (source, messageId): re-sent events get the same id, so they dedup.

    Exactly ``uuid5(EVENT_ID_NAMESPACE, source + US + messageId)``, built from the SHA-1 digest
    directly: ``uuid.UUID`` object construction was a tenth of a batch request's CPU.
    """
    digest = bytearray(
        hashlib.sha1(  # noqa: S324 - uuid5 is defined on SHA-1; this is an id, not a secret
            _NAMESPACE_BYTES + f"{source_id}\x1f{message_id}".encode()
        ).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def correct_timestamp(
    call: SegmentCall, received_at: datetime, sent_at: datetime | None
) -> datetime:
    """Segment's skew correction: ``receivedAt - (sentAt - originalTimestamp)``.

    An explicit ``timestamp`` wins; without ``sentAt`` the client clock cannot be corrected.
    """
    if call.timestamp is not None:
        return call.timestamp
    if call.original_timestamp is not None and sent_at is not None:
        return received_at - (sent_at - call.original_timestamp)
    return call.original_timestamp or received_at


def _external_ids(context: dict[str, Any]) -> list[ExternalId]:
    raw = context.get("externalIds")
    if not isinstance(raw, list):
        return []
    return [ExternalId.model_validate(item) for item in raw]


def to_envelope(
    call: SegmentCall,
    *,
    source_id: str,
    received_at: datetime,
    batch_sent_at: datetime | None = None,
    batch_context: dict[str, Any] | None = None,
) -> EventEnvelope:
    """Build the envelope ingest publishes; batch-level ``context`` fills gaps in the event's."""
    context = {**(batch_context or {}), **call.context} if batch_context else call.context
    message_id = call.message_id or str(uuid.uuid4())
    sent_at = call.sent_at or batch_sent_at
    return EventEnvelope(
        event_id=derive_event_id(source_id, message_id),
        message_id=message_id,
        source_id=source_id,
        type=call.type,  # type: ignore[attr-defined]
        user_id=call.user_id,
        anonymous_id=call.anonymous_id,
        event=call.event if isinstance(call, TrackCall) else None,
        name=call.name if isinstance(call, PageCall | ScreenCall) else None,
        group_id=call.group_id if isinstance(call, GroupCall) else None,
        previous_id=call.previous_id if isinstance(call, AliasCall) else None,
        properties=_properties(call),
        traits=call.traits,
        context=context,
        integrations=call.integrations,
        external_ids=_external_ids(context),
        timestamp=correct_timestamp(call, received_at, sent_at),
        original_timestamp=call.original_timestamp,
        sent_at=sent_at,
        received_at=received_at,
    )


def _properties(call: SegmentCall) -> dict[str, Any]:
    """Page and screen ``category`` is a top-level field; keep it, in properties as Segment does."""
    if isinstance(call, PageCall | ScreenCall) and call.category is not None:
        return {"category": call.category, **call.properties}
    return call.properties


@dataclass(frozen=True, slots=True)
class Invalid:
    """One refused event: where it was, which field, why, and what it was."""

    index: int
    field: str | None
    reason: str
    payload: bytes
    too_large: bool = False


def parse_call(kind: str, item: Any, *, index: int, max_event_bytes: int) -> SegmentCall | Invalid:
    """Validate one event of type ``kind`` (for batches: the item's own ``type``)."""
    raw = orjson.dumps(item)
    if len(raw) > max_event_bytes:
        return Invalid(
            index, None, f"event is {len(raw)} bytes, limit {max_event_bytes}", raw, too_large=True
        )
    if not isinstance(item, dict):
        return Invalid(index, None, "event must be a JSON object", raw)
    model = CALL_MODELS.get(kind)
    if model is None:
        return Invalid(index, "type", f"unknown type {kind!r}", raw)
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        return Invalid(index, where, first["msg"], raw)


class Acceptor:
    """Publishes accepted envelopes and dead letters; returns only once Kafka acked them all."""

    def __init__(self, producer: Any, *, timeout_s: float, retry_after_s: int) -> None:
        self._producer = producer
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s

    @property
    def producer(self) -> Any:
        """The Kafka producer (readiness checks its metadata)."""
        return self._producer

    async def accept(self, envelopes: list[EventEnvelope], rejected: list[DeadLetter]) -> None:
        """Send everything and wait for every ack; any failure is a 503 (the client retries)."""
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self._timeout_s):
                futures = await send_grouped(
                    self._producer,
                    EVENTS_RAW.name,
                    ((env.routing_id.encode(), encode(env)) for env in envelopes),
                )
                if rejected:
                    futures += await send_grouped(
                        self._producer,
                        DEADLETTER.name,
                        (((dead.key or "").encode() or None, encode(dead)) for dead in rejected),
                    )
                await asyncio.gather(*futures)
        except (TimeoutError, KafkaError) as exc:
            log.warning("produce failed: %r", exc)
            metrics.PRODUCE_FAILURES.labels(type(exc).__name__).inc()
            raise Unavailable(
                "the event broker did not acknowledge every event in time; retry "
                "(re-sent events are counted once, by messageId)",
                retry_after=self._retry_after_s,
            ) from exc
        finally:
            metrics.PRODUCE_LATENCY.observe(asyncio.get_running_loop().time() - started)
