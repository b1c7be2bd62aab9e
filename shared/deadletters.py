"""Building dead letters for records a consumer cannot process."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka import ConsumerRecord
from pydantic import ValidationError

from shared.consumer import PoisonSink
from shared.contracts import DeadLetter, Origin
from shared.kafka import Publisher
from shared.topics import DEADLETTER


def from_record(
    stage: str, record: ConsumerRecord[bytes, bytes], error: Exception | str
) -> DeadLetter:
    """A dead letter naming the record's origin and the cause (first field for validation)."""
    field: str | None = None
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        reason, error_type = first["msg"], "validation"
    elif isinstance(error, Exception):
        reason, error_type = str(error), type(error).__name__
    else:
        reason, error_type = error, "rejected"
    return DeadLetter(
        stage=stage,
        reason=reason,
        error_type=error_type,
        field=field,
        key=record.key.decode(errors="replace") if record.key else None,
        payload=(record.value or b"").decode(errors="replace"),
        origin=Origin(topic=record.topic, partition=record.partition, offset=record.offset),
        failed_at=datetime.now(UTC),
    )


def dead_letter_sink(publisher: Publisher, stage: str) -> PoisonSink:
    """A consumer's poison sink: the record and its cause on ``tierflow.deadletter``."""

    async def sink(record: ConsumerRecord[bytes, bytes], error: Exception) -> None:
        key = record.key.decode(errors="replace") if record.key else ""
        await publisher.publish(DEADLETTER, key, from_record(stage, record, error))

    return sink
