"""Scoring as pure functions over a person's state: apply an event, measure, choose a tier.

State is a plain dict (it is the Faust table value, serialised as JSON) so that everything
about a person — scores, the ids already counted, daily caps, tier — is written atomically.
Every read is at an explicit time ``now``: decay and windows are exact at any read time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.scoring.rules import SCORES, Condition, ScoringModel

DAY = 86_400.0
SEEN_LIMIT = 256  # ids remembered per person for dedup: redelivery is of recent events

State = dict[str, Any]


def new_state(first_seen: float) -> State:
    """The state of a person never scored before."""
    return {
        "first_seen_at": first_seen,
        "last_event_at": None,
        "events": 0,
        "seen": [],
        "engagement_at": first_seen,
        "engagement": {},
        "earned": {},
        "days": {},
        "purchases": [],
        "last_purchase_at": None,
        "traits": {},
        "tier": None,
        "tier_since": None,
        "changes": 0,
        "at_change": {},
        "deadline": None,
        "last": None,
    }


def decay_factor(elapsed: float, half_life_days: float) -> float:
    """How much of a score survives ``elapsed`` seconds (1 for negative time: no growth)."""
    return math.pow(0.5, max(0.0, elapsed) / (half_life_days * DAY))


def _day(at: float) -> int:
    return int(at // DAY)


def remember(state: State, marker: str) -> bool:
    """Record ``marker`` (an event or merge id) as applied; False when it already was."""
    if marker in state["seen"]:
        return False
    state["seen"] = [*state["seen"][-(SEEN_LIMIT - 1) :], marker]
    return True


def apply_event(
    state: State,
    *,
    event_id: str,
    kind: str,
    name: str | None,
    properties: Mapping[str, Any],
    traits: Mapping[str, Any],
    at: float,
    model: ScoringModel,
) -> bool:
    """Count one event into ``state`` (mutated); False when its id was already counted.

    A late event adds its points already decayed to the latest time seen, so the result does
    not depend on the order events arrive in.
    """
    if not remember(state, event_id):
        return False
    props = dict(properties)
    ref = state["engagement_at"]
    if at > ref:
        factor = decay_factor(at - ref, model.half_life_days)
        state["engagement"] = {r: p * factor for r, p in state["engagement"].items()}
        ref = state["engagement_at"] = at
    rule = next((r for r in model.engagement if r.match.matches(kind, name, props)), None)
    if rule is not None:
        per_day = state["days"].setdefault(rule.name, {})
        count, used = per_day.get(str(_day(at)), (0, 0.0))
        points = rule.points
        if rule.daily_cap is not None and points > 0:
            points = max(0.0, min(points, rule.daily_cap - used))
        per_day[str(_day(at))] = [count + 1, used + max(points, 0.0)]
        horizon = _day(ref) - math.ceil(model.count_window_days)
        state["days"][rule.name] = {d: v for d, v in per_day.items() if int(d) > horizon}
        if points:
            weight = decay_factor(ref - at, model.half_life_days)
            state["engagement"][rule.name] = state["engagement"].get(rule.name, 0.0) + (
                points * weight
            )
            state["earned"][rule.name] = state["earned"].get(rule.name, 0.0) + points
    rfm = model.rfm
    if rfm.match.matches(kind, name, props):
        amount = props.get(rfm.amount_property)
        number = float(amount) if isinstance(amount, int | float) else 0.0
        state["purchases"].append([at, number if not isinstance(amount, bool) else 0.0])
        last = state["last_purchase_at"]
        state["last_purchase_at"] = at if last is None else max(last, at)
    window = max(rfm.frequency_window_days, rfm.monetary_window_days) * DAY
    state["purchases"] = sorted(p for p in state["purchases"] if ref - p[0] < window)
    for key, value in traits.items():
        held = state["traits"].get(key)
        if isinstance(value, str | int | float | bool) and (held is None or at >= held[1]):
            state["traits"][key] = [value, at]
    state["events"] += 1
    state["last_event_at"] = (
        at if state["last_event_at"] is None else max(at, state["last_event_at"])
    )
    state["first_seen_at"] = min(state["first_seen_at"], at)
    return True


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything conditions test, measured at one time."""

    value: float
    engagement: float
    fit: float
    silent_days: float
    age_days: float
    purchases: int
    revenue: float
    rfm: tuple[int, int, int] | None
    counts: dict[str, int]
    traits: dict[str, Any]
    contributions: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def metric(self, name: str) -> float:
        """A metric by the name conditions use (``count.<rule>`` included; 0 when none)."""
        return self.metrics.get(name, 0.0)


def measure(
    state: Mapping[str, Any], now: float, model: ScoringModel, *, detail: bool = False
) -> Facts:
    """The person's scores and facts at ``now`` (decay and windows applied); ``detail`` adds
    every rule's contribution (for tier changes and explanations, not every event)."""
    factor = decay_factor(now - state["engagement_at"], model.half_life_days)
    engagement = sum(state["engagement"].values()) * factor
    contributions: dict[str, float] = {}
    if detail:
        contributions = {f"engagement.{r}": p * factor for r, p in state["engagement"].items()}
    rfm = model.rfm
    frequency = [a for at, a in state["purchases"] if now - at < rfm.frequency_window_days * DAY]
    revenue = sum(a for at, a in state["purchases"] if now - at < rfm.monetary_window_days * DAY)
    bands: tuple[int, int, int] | None = None
    value = 0.0
    if frequency and state["last_purchase_at"] is not None:
        bands = (
            rfm.recency_days.at_most(max(0.0, now - state["last_purchase_at"]) / DAY),
            rfm.frequency.at_least(len(frequency)),
            rfm.monetary.at_least(revenue),
        )
        weights = (rfm.weights.recency, rfm.weights.frequency, rfm.weights.monetary)
        unit = rfm.scale / sum(weights)
        if detail:
            for label, band, weight in zip(
                ("recency", "frequency", "monetary"), bands, weights, strict=True
            ):
                contributions[f"rfm.{label}"] = band * weight * unit
        value = sum(band * weight for band, weight in zip(bands, weights, strict=True)) * unit
    traits = {key: held[0] for key, held in state["traits"].items()}
    fit = 0.0
    for rule in model.fit:
        if rule.trait in traits:
            points = rule.weight * rule.points.get(str(traits[rule.trait]), 0.0)
            if detail:
                contributions[f"fit.{rule.trait}"] = points
            fit += points
    horizon = _day(now) - model.count_window_days
    counts = {
        rule: sum(v[0] for d, v in days.items() if horizon < int(d) <= _day(now))
        for rule, days in state["days"].items()
    }
    last = state["last_event_at"] or state["first_seen_at"]
    silent, age = max(0.0, now - last) / DAY, max(0.0, now - state["first_seen_at"]) / DAY
    metrics = {
        "value": value,
        "engagement": engagement,
        "fit": fit,
        "total": value + engagement + fit,
        "silent_days": silent,
        "age_days": age,
        "purchases": float(len(frequency)),
        "revenue": revenue,
    }
    metrics.update((f"count.{rule}", float(n)) for rule, n in counts.items())
    return Facts(
        value=value,
        engagement=engagement,
        fit=fit,
        silent_days=silent,
        age_days=age,
        purchases=len(frequency),
        revenue=revenue,
        rfm=bands,
        counts=counts,
        traits=traits,
        contributions=contributions,
        metrics=metrics,
    )


def gaps(
    condition: Condition, facts: Facts, stage: str, tags: list[str], margin: float = 0.0
) -> list[str]:
    """The checks of ``condition`` that fail, in words (empty when it holds)."""
    missing: list[str] = []
    for metric, threshold in condition.at_least.items():
        limit = threshold - (margin if metric in SCORES else 0.0)
        if facts.metric(metric) < limit:
            missing.append(f"{metric} >= {limit:g} (now {facts.metric(metric):.3f})")
    for metric, threshold in condition.below.items():
        limit = threshold + (margin if metric in SCORES else 0.0)
        if facts.metric(metric) >= limit:
            missing.append(f"{metric} < {limit:g} (now {facts.metric(metric):.3f})")
    missing += [f"tag {t}" for t in condition.tags if t not in tags]
    missing += [f"not tag {t}" for t in condition.not_tags if t in tags]
    if condition.stages and stage not in condition.stages:
        missing.append(f"stage in {condition.stages} (now {stage})")
    for trait, allowed in condition.traits.items():
        if facts.traits.get(trait) not in allowed:
            missing.append(f"trait {trait} in {allowed} (now {facts.traits.get(trait)!r})")
    if condition.any_of:
        options = [gaps(a, facts, stage, tags, margin) for a in condition.any_of]
        if all(options):
            missing.append("one of: " + " | ".join(" and ".join(o) for o in options))
    return missing


def stage_of(facts: Facts, model: ScoringModel) -> str:
    """The first lifecycle stage whose condition holds (stages can move backward)."""
    metrics, traits = facts.metrics, facts.traits
    for name, check in model.stage_checks:
        if check(metrics, traits, "", ()):
            return name
    return model.stages[-1].name


def tags_of(facts: Facts, stage: str, model: ScoringModel) -> list[str]:
    """Every tag whose condition holds, in model order."""
    metrics, traits = facts.metrics, facts.traits
    return [name for name, check in model.tag_checks if check(metrics, traits, stage, ())]


@dataclass(frozen=True, slots=True)
class Decision:
    """The tier the model chooses at one time, and what it was chosen on."""

    tier: str
    facts: Facts
    stage: str
    tags: list[str]
    held_by_dwell: bool


def decide(
    state: Mapping[str, Any], now: float, model: ScoringModel, *, detail: bool = False
) -> Decision:
    """First tier whose condition holds; the current tier keeps a ``hysteresis`` margin, and a
    move to a tier listed below the current one waits for the current tier's minimum dwell."""
    facts = measure(state, now, model, detail=detail)
    stage = stage_of(facts, model)
    tags = tags_of(facts, stage, model)
    current = state["tier"]
    names = [t.name for t in model.tiers]
    metrics, traits = facts.metrics, facts.traits
    chosen = next(
        name
        for name, enter, stay in model.tier_checks
        if (stay if name == current else enter)(metrics, traits, stage, tags)
    )
    if current in names and names.index(chosen) > names.index(current):
        dwell = model.tiers[names.index(current)].min_dwell_days * DAY
        if now < state["tier_since"] + dwell:
            return Decision(current, facts, stage, tags, held_by_dwell=True)
    return Decision(chosen, facts, stage, tags, held_by_dwell=False)


def next_deadline(
    state: Mapping[str, Any], now: float, model: ScoringModel, facts: Facts | None = None
) -> float:
    """When time alone could next change this person's tier or stage: a silence or age
    threshold, a purchase leaving its window, a recency band, the end of a dwell, engagement
    decaying below a threshold — and at the latest the periodic re-evaluation."""
    last = state["last_event_at"] or state["first_seen_at"]
    candidates = [now + model.reevaluate_after_days * DAY]
    facts = facts or measure(state, now, model)
    others = facts.value + facts.fit
    rfm = model.rfm
    for metric, threshold in model.thresholds:
        if metric == "silent_days":
            candidates.append(last + threshold * DAY)
        elif metric == "age_days":
            candidates.append(state["first_seen_at"] + threshold * DAY)
        elif metric in {"engagement", "total"} and facts.engagement > 0:
            for limit in (threshold, threshold - model.hysteresis):
                target = limit - (others if metric == "total" else 0.0)
                if 0 < target < facts.engagement:
                    halvings = math.log2(facts.engagement / target)
                    candidates.append(now + halvings * model.half_life_days * DAY)
    for at, _ in state["purchases"]:
        candidates += [at + rfm.frequency_window_days * DAY, at + rfm.monetary_window_days * DAY]
    if state["last_purchase_at"] is not None:
        candidates += [state["last_purchase_at"] + d * DAY for d in rfm.recency_days.thresholds]
    if state["tier"] is not None:
        tier = next((t for t in model.tiers if t.name == state["tier"]), None)
        if tier is not None:
            candidates.append(state["tier_since"] + tier.min_dwell_days * DAY)
    return min(c for c in candidates if c > now)


@dataclass(frozen=True, slots=True)
class Move:
    """A change decided by :func:`evaluate`: the tier, the lifecycle stage, or both moved
    (``from_tier == to_tier`` for a stage change within the tier)."""

    from_tier: str | None
    to_tier: str
    from_stage: str | None
    sequence: int
    facts: Facts
    stage: str
    tags: list[str]
    contributions: list[tuple[str, float]]


def evaluate(state: State, now: float, model: ScoringModel) -> Move | None:
    """Re-decide the tier and stage at ``now``: updates ``state`` (tier, next deadline, the
    snapshot of scores a profile shows) and returns the move when the tier or the lifecycle
    stage changed, with the contributions that changed most since the previous move.

    A stage change within the tier is a change of its own (automation triggers on stages) but
    leaves ``tier_since`` alone: dwell counts from entering the tier.
    """
    decision = decide(state, now, model)
    facts = decision.facts
    previous = state["last"]
    from_stage: str | None = previous["stage"] if previous is not None else None
    state["deadline"] = next_deadline(state, now, model, facts)
    state["last"] = {
        "at": now,
        "value": facts.value,
        "engagement": facts.engagement,
        "fit": facts.fit,
        "stage": decision.stage,
        "tags": decision.tags,
    }
    tier_moved = decision.tier != state["tier"]
    if not tier_moved and decision.stage == from_stage:
        return None
    current = measure(state, now, model, detail=True).contributions
    before = state["at_change"]
    deltas = {k: current.get(k, 0.0) - before.get(k, 0.0) for k in {*current, *before}}
    top = sorted(
        ((k, round(v, 3)) for k, v in deltas.items() if round(v, 3)),
        key=lambda item: (-abs(item[1]), item[0]),
    )[:5]
    move = Move(
        from_tier=state["tier"],
        to_tier=decision.tier,
        from_stage=from_stage,
        sequence=state["changes"] + 1,
        facts=facts,
        stage=decision.stage,
        tags=decision.tags,
        contributions=top,
    )
    state.update(changes=move.sequence, at_change=dict(current))
    if tier_moved:
        state.update(tier=decision.tier, tier_since=now)
    return move


def fold(winner: State | None, absorbed: State, model: ScoringModel) -> State:
    """The winner's state with the absorbed person's events folded in (a merge).

    Scores, counts, purchases and traits combine as if every event had carried one id; the
    tier history stays the winner's. A daily cap hit by both people on the same day counts
    the points each already earned (combined usage is clipped at the cap for later events).
    """
    if winner is None:
        return {
            **absorbed,
            "tier": None,
            "tier_since": None,
            "changes": 0,
            "at_change": {},
            "last": None,
        }
    merged = dict(winner)
    ref = max(winner["engagement_at"], absorbed["engagement_at"])
    engagement: dict[str, float] = {}
    for part in (winner, absorbed):
        factor = decay_factor(ref - part["engagement_at"], model.half_life_days)
        for rule, points in part["engagement"].items():
            engagement[rule] = engagement.get(rule, 0.0) + points * factor
    caps = {r.name: r.daily_cap for r in model.engagement}
    days: dict[str, dict[str, list[float]]] = {}
    for part in (winner, absorbed):
        for rule, per_day in part["days"].items():
            into = days.setdefault(rule, {})
            for day, (count, used) in per_day.items():
                old = into.get(day, [0, 0.0])
                total = old[1] + used
                cap = caps.get(rule)
                into[day] = [old[0] + count, min(total, cap) if cap is not None else total]
    traits = dict(absorbed["traits"])
    for key, held in winner["traits"].items():
        if key not in traits or held[1] >= traits[key][1]:
            traits[key] = held
    purchases = [*winner["purchases"], *absorbed["purchases"]]
    last_purchases = [p for p in (winner["last_purchase_at"], absorbed["last_purchase_at"]) if p]
    last_events = [e for e in (winner["last_event_at"], absorbed["last_event_at"]) if e]
    seen = [*winner["seen"], *(s for s in absorbed["seen"] if s not in set(winner["seen"]))]
    merged.update(
        first_seen_at=min(winner["first_seen_at"], absorbed["first_seen_at"]),
        last_event_at=max(last_events) if last_events else None,
        events=winner["events"] + absorbed["events"],
        seen=seen[-SEEN_LIMIT:],
        engagement_at=ref,
        engagement=engagement,
        earned={
            r: winner["earned"].get(r, 0.0) + absorbed["earned"].get(r, 0.0)
            for r in {*winner["earned"], *absorbed["earned"]}
        },
        days=days,
        purchases=sorted(purchases),
        last_purchase_at=max(last_purchases) if last_purchases else None,
        traits=traits,
    )
    return merged
