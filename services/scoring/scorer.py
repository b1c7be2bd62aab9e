"""Scoring as pure functions over a person's state: apply an event, decay, choose a tier.

State is a plain dict (it is the Faust table value, serialised as JSON) so that everything
about a person — scores, the ids already counted, daily caps, tier — is written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.scoring.rules import ScoringModel, Tier

DAY = 86_400.0
SEEN_LIMIT = 512  # event ids remembered per person for dedup; redelivery is recent


def new_state(first_seen: float) -> dict[str, Any]:
    """The state of a person never scored before."""
    return {
        "engagement": 0.0,
        "engagement_at": first_seen,
        "value": 0.0,
        "tier": None,
        "tier_since": None,
        "events": 0,
        "first_seen_at": first_seen,
        "last_event_at": None,
        "daily": {},
        "seen": [],
        "contributions": {},
    }


def decayed(points: float, since: float, now: float, half_life_days: float) -> float:
    """``points`` measured at ``since``, decayed exponentially to ``now`` (exact at any time)."""
    elapsed = max(0.0, now - since)
    return points * math.pow(0.5, elapsed / (half_life_days * DAY))


def engagement_at(state: Mapping[str, Any], now: float, model: ScoringModel) -> float:
    """The person's engagement score at ``now``."""
    return decayed(state["engagement"], state["engagement_at"], now, model.half_life_days)


def apply_event(
    state: dict[str, Any],
    *,
    event_id: str,
    kind: str,
    name: str | None,
    properties: Mapping[str, Any],
    at: float,
    model: ScoringModel,
) -> bool:
    """Count one event into ``state`` (mutated); False when its id was already counted."""
    if event_id in state["seen"]:
        return False
    state["seen"] = [*state["seen"][-(SEEN_LIMIT - 1) :], event_id]
    now = max(at, state["engagement_at"])  # late events count at the latest known time
    engagement = engagement_at(state, now, model)
    props = dict(properties)
    day = str(int(at // DAY))
    for rule in model.engagement:
        if not rule.match.matches(kind, name, props):
            continue
        points = rule.points
        if rule.daily_cap is not None:
            used_day, used = state["daily"].get(rule.name, [day, 0.0])
            used = used if used_day == day else 0.0
            points = max(0.0, min(points, rule.daily_cap - used)) if points > 0 else points
            state["daily"][rule.name] = [day, used + max(points, 0.0)]
        engagement += points
        _credit(state, rule.name, points)
        break  # one engagement rule per event: the most specific one is listed first
    value_rule = model.value
    if value_rule.match.matches(kind, name, props):
        amount = props.get(value_rule.amount_property)
        if isinstance(amount, int | float) and not isinstance(amount, bool) and amount > 0:
            gained = min(
                amount * value_rule.points_per_unit, value_rule.max_points - state["value"]
            )
            state["value"] += max(gained, 0.0)
            _credit(state, "value", max(gained, 0.0))
    state["engagement"] = engagement
    state["engagement_at"] = now
    state["events"] += 1
    state["last_event_at"] = max(at, state["last_event_at"] or at)
    return True


def _credit(state: dict[str, Any], rule: str, points: float) -> None:
    state["contributions"][rule] = state["contributions"].get(rule, 0.0) + points


def total_score(state: Mapping[str, Any], now: float, model: ScoringModel) -> float:
    """Value plus decayed engagement."""
    return float(state["value"]) + engagement_at(state, now, model)


def silent_days(state: Mapping[str, Any], now: float) -> float:
    """Days since the last counted event (since first seen when none)."""
    last: float = state["last_event_at"] or state["first_seen_at"]
    return max(0.0, now - last) / DAY


def _qualifies(tier: Tier, score: float, silence: float, margin: float) -> bool:
    if tier.min_silent_days is not None and silence < tier.min_silent_days:
        return False
    return score >= tier.min_score - margin


def choose_tier(state: Mapping[str, Any], now: float, model: ScoringModel) -> str:
    """The first tier whose conditions hold; the current tier keeps a ``hysteresis`` margin."""
    score = total_score(state, now, model)
    silence = silent_days(state, now)
    current = state["tier"]
    for tier in model.tiers:
        margin = model.hysteresis if tier.name == current else 0.0
        if _qualifies(tier, score, silence, margin):
            return tier.name
    return model.tiers[-1].name


def next_deadline(state: Mapping[str, Any], now: float, model: ScoringModel) -> float:
    """When silence alone could next change this person's tier: a silence threshold being
    crossed, or the periodic re-evaluation as engagement decays."""
    last = state["last_event_at"] or state["first_seen_at"]
    candidates = [now + model.reevaluate_after_days * DAY]
    for tier in model.tiers:
        if tier.min_silent_days is not None:
            at = last + tier.min_silent_days * DAY
            if at > now:
                candidates.append(at)
    return min(candidates)


def lifecycle_stage(state: Mapping[str, Any], now: float) -> str:
    """new (first week), declining (silent two weeks or more), mature (a buyer), else growing."""
    if silent_days(state, now) >= 14:
        return "declining"
    if now - state["first_seen_at"] < 7 * DAY:
        return "new"
    return "mature" if state["value"] > 0 else "growing"


@dataclass(frozen=True, slots=True)
class Move:
    """A tier change decided by :func:`evaluate`."""

    from_tier: str | None
    to_tier: str
    score: float
    engagement: float
    contributions: list[tuple[str, float]]


def evaluate(state: dict[str, Any], now: float, model: ScoringModel) -> Move | None:
    """Re-decide the tier at ``now``; updates ``state`` and returns the move if it changed."""
    tier = choose_tier(state, now, model)
    if tier == state["tier"]:
        return None
    move = Move(
        from_tier=state["tier"],
        to_tier=tier,
        score=total_score(state, now, model),
        engagement=engagement_at(state, now, model),
        contributions=sorted(
            ((rule, round(points, 3)) for rule, points in state["contributions"].items()),
            key=lambda item: -abs(item[1]),
        )[:5],
    )
    state["tier"] = tier
    state["tier_since"] = now
    return move
