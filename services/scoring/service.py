"""Scoring use cases as pure functions: an event, a timer, a merge fold — each returns the new
state and, maybe, a tier-change CloudEvent; plus the profile and the explanation of a person."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from services.scoring import scorer
from services.scoring.rules import ScoringModel
from services.scoring.schemas import ScoredEvent
from services.scoring.scorer import State
from shared.contracts import (
    Contact,
    Contribution,
    Profile,
    ResolvedEvent,
    Scores,
    TierChangeCause,
    TierChanged,
    TierChangeEvent,
    encode,
)

ONEID_MAX = 64
"""The longest oneid a contract accepts (``shared.contracts``' ``OneId``)."""
CHANGE_NAMESPACE = uuid.UUID("3f9a7c21-5d4e-4b8a-9e0f-71c2d6a8b4e5")


def tier_change_id(
    oneid: str,
    sequence: int,
    *,
    from_tier: str | None,
    to_tier: str,
    from_stage: str | None,
    stage: str,
) -> str:
    """The id of a person's n-th change, which is that move: the UUIDv5 in ``CHANGE_NAMESPACE``
    of oneid, n, from_tier, to_tier, from_stage and stage joined by ``\\x1f`` (None as empty),
    formatted directly (building the ``UUID`` object costs more than the hash).

    The same change recomputed after a crash has the same id. The move is part of it because
    redoing work after a crash can meet events and commands (merges, the timer) in another
    order than the first time: the n-th change can then be another move, and with the
    sequence alone it would reuse the id of the move already published, so a consumer
    deduplicating by id would drop it."""
    digest = bytearray(
        hashlib.sha1(
            CHANGE_NAMESPACE.bytes
            + f"{oneid}\x1f{sequence}\x1f{from_tier or ''}\x1f{to_tier}\x1f{from_stage or ''}"
            f"\x1f{stage}".encode(),
            usedforsecurity=False,
        ).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def score_event(
    state: State | None, resolved: ResolvedEvent | ScoredEvent, model: ScoringModel
) -> tuple[State, bool, TierChangeEvent | None]:
    """Count the event (unless already counted) and re-decide the tier at the event's time
    (never before the previous evaluation: :func:`_evaluation_time`).

    Returns the new state, whether the event was counted, and the tier change if any. Event
    time, not wall-clock time, is used so a replay of the same events gives the same result.
    """
    event = resolved.event
    at = event.timestamp.timestamp()
    # scorer replaces a state's containers and never changes them: a shallow copy is enough
    current = dict(state) if state else scorer.new_state(at)
    counted = scorer.apply_event(
        current,
        event_id=event.event_id,
        kind=event.type,
        name=event.event,
        properties=event.properties,
        traits=event.traits,
        at=at,
        model=model,
    )
    if not counted:
        return current, False, None
    now = _evaluation_time(current)
    move = scorer.evaluate(current, now, model)
    return (
        current,
        True,
        _change(resolved.oneid, current, move, model, now, "event", event.event_id),
    )


def reevaluate(
    oneid: str, state: State, now: float, model: ScoringModel
) -> tuple[State, TierChangeEvent | None]:
    """The inactivity timer: re-decide the tier at ``now`` with no event."""
    current = dict(state)
    at = max(now, _evaluation_time(current))  # a worker whose clock is behind: not back in time
    move = scorer.evaluate(current, at, model)
    return current, _change(oneid, current, move, model, at, "timer")


def fold_in(
    oneid: str, state: State | None, absorbed: State, fold_id: str, model: ScoringModel
) -> tuple[State, bool, TierChangeEvent | None]:
    """A merge: fold the absorbed person's state into ``oneid``'s once (``fold_id`` dedups),
    then re-evaluate once at the latest time either of them was seen."""
    if state is not None and scorer.has_seen(state, fold_id):
        return state, False, None
    current = scorer.fold(state, absorbed, model)  # a new state; neither input changes
    scorer.remember(current, fold_id)
    now = _evaluation_time(current)
    move = scorer.evaluate(current, now, model)
    return current, True, _change(oneid, current, move, model, now, "merge", fold_id)


def _evaluation_time(state: State) -> float:
    """When an event or a merge re-decides the tier: the latest event time seen, but never
    before the person's previous evaluation. A timer evaluates at the clock's time, and an
    event stamped before it but scored after must not take the person back in time: its
    profile would be older than the one published (the read model keeps the newer, so it
    would stay stale), and dwell would be measured from before the tier was entered."""
    last = state["last"]
    at: float = state["engagement_at"]
    return max(at, last["at"]) if last is not None else at


def _change(
    oneid: str,
    state: State,
    move: scorer.Move | None,
    model: ScoringModel,
    now: float,
    cause: Literal["event", "timer", "merge"],
    cause_id: str | None = None,
) -> TierChangeEvent | None:
    if move is None:
        return None
    changed_at = _at(now)
    return TierChangeEvent(
        id=tier_change_id(
            oneid,
            move.sequence,
            from_tier=move.from_tier,
            to_tier=move.to_tier,
            from_stage=move.from_stage,
            stage=move.stage,
        ),
        subject=oneid,
        time=changed_at,
        data=TierChanged(
            oneid=oneid,
            from_tier=move.from_tier,
            to_tier=move.to_tier,
            lifecycle_stage=move.stage,
            from_stage=move.from_stage,
            scores=_scores(move.facts.value, move.facts.engagement, move.facts.fit),
            tags=move.tags,
            contributions=[Contribution(rule=r, points=p) for r, p in move.contributions],
            model_version=model.version,
            cause=TierChangeCause(kind=cause, event_id=cause_id),
            changed_at=changed_at,
            contact=contact_of(state["traits"]),
            sequence=move.sequence,
        ),
    )


UNSUBSCRIBED = "unsubscribed_"
DO_NOT_CONTACT = "do_not_contact"


def contact_of(traits: Mapping[str, list[Any]]) -> Contact:
    """The person's contact preferences from their latest traits (``[value, set at]`` each):
    ``timezone``, ``do_not_contact: true``, ``unsubscribed_<channel>: true``."""
    return Contact.model_validate(_contact_json(traits))


def _contact_json(traits: Mapping[str, list[Any]]) -> dict[str, Any]:
    """:func:`contact_of` as the plain dict a profile's JSON holds."""
    timezone = traits.get("timezone")
    optouts = sorted(
        key.removeprefix(UNSUBSCRIBED) if key != DO_NOT_CONTACT else key
        for key, (value, _) in traits.items()
        if value is True and (key == DO_NOT_CONTACT or key.startswith(UNSUBSCRIBED))
    )
    zone = timezone[0] if timezone is not None and isinstance(timezone[0], str) else None
    return {"optouts": optouts, "timezone": zone}


def _scores(value: float, engagement: float, fit: float) -> Scores:
    return Scores(
        value=round(value, 3),
        engagement=round(engagement, 3),
        fit=round(fit, 3),
        total=round(value + engagement + fit, 3),
    )


def profile_of(oneid: str, state: State, model: ScoringModel) -> Profile:
    """The profile published on ``tierflow.profiles``: the scores, stage and tags of the
    person's latest evaluation (an event, a merge or the timer — at least daily)."""
    last = state["last"]
    return Profile(
        oneid=oneid,
        tier=state["tier"],
        tier_since=_at(state["tier_since"]) if state["tier_since"] else None,
        lifecycle_stage=last["stage"],
        scores=_scores(last["value"], last["engagement"], last["fit"]),
        tags=last["tags"],
        events_counted=state["events"],
        last_event_at=_at(state["last_event_at"]) if state["last_event_at"] else None,
        model_version=model.version,
        updated_at=_at(last["at"]),
        contact=contact_of(state["traits"]),
    )


def profile_json(oneid: str, state: State, model: ScoringModel) -> bytes:
    """``encode(profile_of(oneid, state, model))``, the same bytes, built without the model:
    a profile is sent for every changed person and validating what the scorer just computed
    costs more than the rest. An id a ``Profile`` would refuse goes through ``profile_of``
    (and is refused the same way)."""
    if not 0 < len(oneid) <= ONEID_MAX:
        return encode(profile_of(oneid, state, model))
    last = state["last"]
    return orjson.dumps(
        {
            "schema_version": 1,
            "oneid": oneid,
            "tier": state["tier"],
            "tier_since": _at(state["tier_since"]) if state["tier_since"] else None,
            "lifecycle_stage": last["stage"],
            "scores": _scores_json(last["value"], last["engagement"], last["fit"]),
            "tags": last["tags"],
            "events_counted": state["events"],
            "last_event_at": _at(state["last_event_at"]) if state["last_event_at"] else None,
            "model_version": model.version,
            "updated_at": _at(last["at"]),
            "contact": _contact_json(state["traits"]),
        },
        option=orjson.OPT_UTC_Z,
    )


def _scores_json(value: float, engagement: float, fit: float) -> dict[str, float]:
    return {
        "value": round(value, 3),
        "engagement": round(engagement, 3),
        "fit": round(fit, 3),
        "total": round(value + engagement + fit, 3),
    }


def explain(oneid: str, state: State, model: ScoringModel, now: float) -> dict[str, Any]:
    """Scores, every rule's contribution, the decay applied, why this tier, what would change it."""
    # never before the last evaluation: a worker whose clock is behind would otherwise show
    # the current tier as not holding
    at = max(now, _evaluation_time(state))
    decision = scorer.decide(state, at, model, detail=True)
    facts = decision.facts
    factor = scorer.decay_factor(at - state["engagement_at"], model.half_life_days)
    engagement = [
        {
            "rule": rule,
            "earned": round(state["earned"].get(rule, 0.0), 3),
            "now": round(points * factor, 3),
            "decay_applied": round(state["earned"].get(rule, 0.0) - points * factor, 3),
        }
        for rule, points in sorted(scorer.engagement_points(state, model).items())
    ]
    current = state["tier"]
    names = [t.name for t in model.tiers]
    tiers = []
    for tier in model.tiers:
        margin = model.hysteresis if tier.name == current else 0.0
        missing = scorer.gaps(tier.when, facts, decision.stage, decision.tags, margin)
        tiers.append({"tier": tier.name, "holds": not missing, "missing": missing})
    margin = model.hysteresis
    above = names[: names.index(current)] if current in names else names
    held = next((t for t in model.tiers if t.name == current), None)
    dwell_until = (
        state["tier_since"] + model.schedule.dwell[current]
        if held is not None and held.min_dwell_days
        else None
    )
    if dwell_until is not None and dwell_until <= at:
        dwell_until = None  # over: a drop would not wait
    return {
        "profile": profile_of(oneid, state, model).model_dump(mode="json"),
        "now": {
            "at": _at(at).isoformat(),
            "scores": _scores(facts.value, facts.engagement, facts.fit).model_dump(),
            "lifecycle_stage": decision.stage,
            "tags": decision.tags,
        },
        "rfm": dict(zip(("recency", "frequency", "monetary"), facts.rfm, strict=True))
        if facts.rfm
        else None,
        "contributions": {k: round(v, 3) for k, v in sorted(facts.contributions.items())},
        "engagement": engagement,
        "half_life_days": model.half_life_days,
        "counts": facts.counts,
        "silent_days": round(facts.silent_days, 3),
        "why": {
            "tier": current,
            "chosen_now": decision.tier,
            "held_by_dwell": decision.held_by_dwell,
            "hysteresis": model.hysteresis,
            "tiers": tiers,
        },
        "what_would_change_it": {
            "to_reach": {t["tier"]: t["missing"] for t in tiers if t["tier"] in above},
            # the tier is kept while all of these hold (with the hysteresis margin); a move to
            # a lower tier also waits for the dwell
            "to_keep": scorer.terms(held.when, facts, decision.stage, decision.tags, margin)
            if held is not None and held is not model.tiers[-1]
            else [],
            "dwell_until": _at(dwell_until).isoformat() if dwell_until is not None else None,
            # the deadline the timer holds (recomputed from now, it slid with every request)
            "next_evaluation": _at(state["deadline"]).isoformat()
            if state["deadline"] is not None
            else None,
        },
    }
