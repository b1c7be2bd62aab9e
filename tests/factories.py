"""Small builders of test data: ``make_event(**overrides)`` and friends."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime
from typing import Any

from shared.contracts import (
    EventEnvelope,
    ResolvedEvent,
    Scores,
    TierChangeCause,
    TierChanged,
    TierChangeEvent,
)

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def make_event(**overrides: Any) -> EventEnvelope:
    """A valid track envelope; override any field."""
    message_id = overrides.pop("message_id", str(uuid.uuid4()))
    fields: dict[str, Any] = {
        "event_id": overrides.pop("event_id", message_id),
        "message_id": message_id,
        "source_id": "test",
        "type": "track",
        "user_id": "u-1",
        "event": "Webinar Attended",
        "timestamp": T0,
        "received_at": T0,
    }
    fields.update(overrides)
    return EventEnvelope(**fields)


def make_resolved(oneid: str = "p-1", **overrides: Any) -> ResolvedEvent:
    """A resolved event for ``oneid``."""
    return ResolvedEvent(oneid=oneid, event=make_event(**overrides), resolved_at=T0)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_tier_change(
    oneid: str,
    to_tier: str,
    from_tier: str | None = None,
    *,
    change_id: str | None = None,
    total: float = 50,
    tags: list[str] | None = None,
    model_version: str = "test",
    event_id: str = "e",
    stage: str = "growing",
    from_stage: str | None = None,
    at: datetime | None = None,
    sequence: int = 0,
) -> TierChangeEvent:
    """A tier change of ``oneid`` at ``at`` (default now; a stage change when ``to_tier ==
    from_tier``), the person's ``sequence``-th."""
    at = at or datetime.now(UTC)
    return TierChangeEvent(
        id=change_id or f"tc-{uuid.uuid4()}",
        subject=oneid,
        time=at,
        data=TierChanged(
            oneid=oneid,
            from_tier=from_tier,
            to_tier=to_tier,
            lifecycle_stage=stage,
            from_stage=from_stage,
            scores=Scores(total=total),
            tags=tags or [],
            model_version=model_version,
            cause=TierChangeCause(kind="event", event_id=event_id),
            changed_at=at,
            sequence=sequence,
        ),
    )
