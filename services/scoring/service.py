"""One resolved event through the model: new state and, maybe, a tier-change CloudEvent (pure)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from services.scoring import scorer
from services.scoring.rules import ScoringModel
from shared.contracts import (
    Contribution,
    Profile,
    ResolvedEvent,
    Scores,
    TierChangeCause,
    TierChanged,
    TierChangeEvent,
)

CHANGE_NAMESPACE = uuid.UUID("3f9a7c21-5d4e-4b8a-9e0f-71c2d6a8b4e5")


def tier_change_id(oneid: str, sequence: int) -> str:
    """The n-th tier change of a person always has the same id, however often it is computed."""
    return str(uuid.uuid5(CHANGE_NAMESPACE, f"{oneid}\x1f{sequence}"))


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def score_event(
    state: dict[str, Any] | None, resolved: ResolvedEvent, model: ScoringModel
) -> tuple[dict[str, Any], bool, TierChangeEvent | None]:
    """Count the event (unless already counted) and re-decide the tier at the event's time.

    Returns the new state, whether the event was counted, and the tier change if any. Event
    time, not wall-clock time, is used so a replay of the same events gives the same result.
    """
    event = resolved.event
    at = event.timestamp.timestamp()
    current = dict(state) if state else scorer.new_state(at)
    current["daily"] = dict(current["daily"])
    current["contributions"] = dict(current["contributions"])
    counted = scorer.apply_event(
        current,
        event_id=event.event_id,
        kind=event.type,
        name=event.event,
        properties=event.properties,
        at=at,
        model=model,
    )
    if not counted:
        return current, False, None
    now = max(at, current["engagement_at"])
    move = scorer.evaluate(current, now, model)
    if move is None:
        return current, True, None
    return current, True, _change(resolved.oneid, current, move, model, now, event.event_id)


def _change(
    oneid: str,
    state: dict[str, Any],
    move: scorer.Move,
    model: ScoringModel,
    now: float,
    event_id: str | None,
) -> TierChangeEvent:
    sequence = state.get("changes", 0) + 1
    state["changes"] = sequence
    changed_at = _at(now)
    return TierChangeEvent(
        id=tier_change_id(oneid, sequence),
        subject=oneid,
        time=changed_at,
        data=TierChanged(
            oneid=oneid,
            from_tier=move.from_tier,
            to_tier=move.to_tier,
            lifecycle_stage=scorer.lifecycle_stage(state, now),
            scores=Scores(
                value=round(state["value"], 3),
                engagement=round(move.engagement, 3),
                total=round(move.score, 3),
            ),
            contributions=[Contribution(rule=r, points=p) for r, p in move.contributions],
            model_version=model.version,
            cause=TierChangeCause(kind="event" if event_id else "timer", event_id=event_id),
            changed_at=changed_at,
        ),
    )


def profile_of(oneid: str, state: dict[str, Any], model: ScoringModel, now: float) -> Profile:
    """The profile published on ``tierflow.profiles``."""
    engagement = scorer.engagement_at(state, now, model)
    return Profile(
        oneid=oneid,
        tier=state["tier"],
        tier_since=_at(state["tier_since"]) if state["tier_since"] else None,
        lifecycle_stage=scorer.lifecycle_stage(state, now),
        scores=Scores(
            value=round(state["value"], 3),
            engagement=round(engagement, 3),
            total=round(state["value"] + engagement, 3),
        ),
        events_counted=state["events"],
        last_event_at=_at(state["last_event_at"]) if state["last_event_at"] else None,
        model_version=model.version,
        updated_at=_at(now),
    )
