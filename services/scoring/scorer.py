"""Scoring as pure functions over a person's state: apply an event, measure, choose a tier.

State is a plain dict (it is the Faust table value, serialised as JSON) so that everything
about a person — scores, the ids already counted, daily caps, tier — is written atomically.
Every read is at an explicit time ``now``: decay and windows are exact at any read time.

This runs for every event, so the containers a state holds are never changed in place, only
replaced: a shallow copy of a stored state is a safe copy. The small result types are plain
(not frozen) dataclasses because a frozen one costs five times as much to build.
"""

from __future__ import annotations

import math
from binascii import b2a_base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

from services.scoring.rules import DAY, SCORES, Condition, EngagementRule, ScoringModel

__all__ = ["DAY"]  # re-exported: callers measure time in days of this length

SEEN_LIMIT = 256  # ids remembered per person for dedup: redelivery is of recent events
TOKEN_WIDTH = 12  # a remembered id: 11 base64 characters of a 64-bit digest, then a comma

State = dict[str, Any]


def new_state(first_seen: float) -> State:
    """The state of a person never scored before."""
    return {
        "first_seen_at": first_seen,
        "last_event_at": None,
        "events": 0,
        "seen": "",
        "engagement_at": first_seen,
        "engagement": {},
        "earned": {},
        "days": {},
        "cap_times": {},
        "purchases": [],
        "last_purchase_at": None,
        "traits": {},
        "tier": None,
        "tier_since": None,
        "changes": 0,
        "at_change": {},
        "deadline": None,
        "last": None,
        "model": None,
    }


def engagement_points(state: Mapping[str, Any], model: ScoringModel) -> dict[str, float]:
    """The person's engagement points (at ``engagement_at``) under ``model``'s rules.

    Points a state holds for a rule the model does not have (removed or renamed since) are not
    counted, but kept: during a rolling deploy two model versions share the partitions, and
    a rollback goes back; dropping them would lose the newer version's points for good. A
    state stamped with the model's version holds no other rules (:func:`evaluate` stamps it
    only then), so the common case is the dict itself."""
    held: dict[str, float] = state["engagement"]
    if state.get("model") == model.version:
        return held
    rules = model.rule_names
    return {rule: points for rule, points in held.items() if rule in rules}


def decay_factor(elapsed: float, half_life_days: float) -> float:
    """How much of a score survives ``elapsed`` seconds (1 for negative time: no growth)."""
    return math.pow(0.5, max(0.0, elapsed) / (half_life_days * DAY))


def _day(at: float) -> int:
    return int(at // DAY)


def seen_token(marker: str) -> str:
    """What a state remembers of an event or merge id: 64 bits of its BLAKE2b digest.

    A person's state is written to the changelog on every change and carries the last
    ``SEEN_LIMIT`` ids; as 36-character UUIDs in a JSON list they were ~10 KB of every long-lived
    state, and ``remember`` scanned and copied a Python list per event. Fixed-width tokens in one
    string keep that at 3 KB and make the membership test one substring search. The chance that
    a new id's token equals one of the 256 remembered is 256 / 2^64 (about 1e-17) per event.
    """
    digest = blake2b(marker.encode(), digest_size=8).digest()
    return b2a_base64(digest, newline=False)[:11].decode() + ","


def seen_tokens(seen: str | Iterable[str]) -> str:
    """A state's remembered ids as the token string (a state written before tokens kept a list
    of the ids themselves)."""
    return seen if isinstance(seen, str) else "".join(seen_token(marker) for marker in seen)


def each_seen(seen: str | Iterable[str]) -> list[str]:
    """The remembered ids' tokens one by one, oldest first."""
    joined = seen_tokens(seen)
    return [joined[i : i + TOKEN_WIDTH] for i in range(0, len(joined), TOKEN_WIDTH)]


def has_seen(state: Mapping[str, Any], marker: str) -> bool:
    """True when ``marker`` was already applied to ``state``.

    A token is 11 base64 characters and a comma, and commas appear in the string only at the
    end of each token, so a match of a whole token can only start where a token starts.
    """
    return seen_token(marker) in seen_tokens(state["seen"])


def remember(state: State, marker: str) -> bool:
    """Record ``marker`` (an event or merge id) as applied; False when it already was."""
    seen, token = seen_tokens(state["seen"]), seen_token(marker)
    if token in seen:  # aligned: see has_seen
        return False
    state["seen"] = seen[-(SEEN_LIMIT - 1) * TOKEN_WIDTH :] + token
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
    """Count one event into ``state`` (its values are replaced); False when its id was
    already counted.

    A late event adds its points already decayed to the latest time seen, so the result does
    not depend on the order events arrive in.
    """
    if not remember(state, event_id):
        return False
    ref = state["engagement_at"]
    if at > ref:
        factor = decay_factor(at - ref, model.half_life_days)
        state["engagement"] = {r: p * factor for r, p in state["engagement"].items()}
        ref = state["engagement_at"] = at
    rule = model.engagement_index.first(kind, name, properties)
    if rule is not None:
        points, weighted = _count_day(state, rule, at, ref, model)
        if points or weighted:
            engagement, earned = state["engagement"], state["earned"]
            state["engagement"] = {
                **engagement,
                rule.name: engagement.get(rule.name, 0.0) + weighted,
            }
            state["earned"] = {**earned, rule.name: earned.get(rule.name, 0.0) + points}
    _apply_purchase(state, kind, name, properties, at, ref, model)
    if traits:
        _apply_traits(state, traits, at)
    state["events"] += 1
    state["last_event_at"] = (
        at if state["last_event_at"] is None else max(at, state["last_event_at"])
    )
    state["first_seen_at"] = min(state["first_seen_at"], at)
    return True


def _count_day(
    state: State, rule: EngagementRule, at: float, ref: float, model: ScoringModel
) -> tuple[float, float]:
    """Count the event in its UTC day (days older than the count window are dropped) and
    return what the rule's points change by under the daily cap: as earned, and decayed to
    ``ref``.

    A day's entry in ``days`` is ``[count, used]``. For a capped rule, ``cap_times`` also keeps
    the times of the day's earliest matching events, as many as earn a share of the cap
    (``rule.cap_shares``): the cap goes to the day's earliest events whatever order they arrive
    in, so a late event from earlier in the day takes its share from a later one, the scores
    do not depend on arrival order, and a merge combines two people's days exactly. Times are
    kept apart from ``[count, used]`` so that a worker of the previous version (a rolling
    deploy, a rollback) reads the state as before. A day caps in arrival order when its times
    do not account for its use: none kept (written before they were, or a cap needing too
    many events), written under another model's points or cap, or by an older worker.
    """
    per_day = state["days"].get(rule.name, {})
    timed = state.get("cap_times", {}).get(rule.name, {})
    day = _day(at)
    key = str(day)
    entry = per_day.get(key)
    count, used = (entry[0], entry[1]) if entry else (0, 0.0)
    shares = rule.cap_shares
    times: list[float] | None = timed.get(key) if entry else []
    if shares and times is not None and _accounts_for(times, used, shares):
        if len(times) < len(shares) and (not times or at >= times[-1]):
            points = shares[len(times)]  # in time order: the next share is the event's own
            weighted = points * decay_factor(ref - at, model.half_life_days)
            times = [*times, at]
        elif times and at >= times[-1]:
            points = weighted = 0.0  # the cap went to earlier events
        else:
            earlier = times
            times = sorted([*times, at])[: len(shares)]
            points = sum(shares[: len(times)]) - sum(shares[: len(earlier)])
            weighted = _shares_at(times, shares, ref, model) - _shares_at(
                earlier, shares, ref, model
            )
        updated = [count + 1, sum(shares[: len(times)])]
    else:
        points = rule.points
        if rule.daily_cap is not None and points > 0:
            points = max(0.0, min(points, rule.daily_cap - used))
        weighted = points * decay_factor(ref - at, model.half_life_days)
        updated = [count + 1, used + max(points, 0.0)]
        times = None
    horizon = _day(ref) - math.ceil(model.count_window_days)
    kept = {d: v for d, v in per_day.items() if int(d) > horizon}
    kept_times = {d: v for d, v in timed.items() if int(d) > horizon and d != key}
    if day > horizon:
        kept[key] = updated
        if times is not None:
            kept_times[key] = times
    state["days"] = {**state["days"], rule.name: kept}
    if kept_times or timed:
        state["cap_times"] = {**state.get("cap_times", {}), rule.name: kept_times}
    return points, weighted


def _accounts_for(times: list[float], used: float, shares: tuple[float, ...]) -> bool:
    """Whether a day's kept ``times`` earned exactly its ``used`` under ``shares`` (else they
    came from another model's cap, or an older worker counted events without them)."""
    return len(times) <= len(shares) and math.isclose(
        used, sum(shares[: len(times)]), rel_tol=1e-9, abs_tol=1e-9
    )


def _shares_at(
    times: list[float], shares: tuple[float, ...], ref: float, model: ScoringModel
) -> float:
    """What shares of a day's cap earned at ``times`` are worth, decayed to ``ref``."""
    return sum(
        share * decay_factor(ref - at, model.half_life_days)
        for share, at in zip(shares, times, strict=False)
    )


def _apply_purchase(
    state: State,
    kind: str,
    name: str | None,
    properties: Mapping[str, Any],
    at: float,
    ref: float,
    model: ScoringModel,
) -> None:
    """Record a purchase, and keep purchases (sorted by time) within the longest RFM window
    of the latest time seen."""
    rfm = model.rfm
    purchases = state["purchases"]
    bought = rfm.match.matches(kind, name, properties)
    amount = _amount(properties.get(rfm.amount_property)) if bought else None
    if amount is None:
        bought = False  # a refund sent as a negative order is not a purchase
    else:
        purchases = [*purchases, [at, amount]]
        last = state["last_purchase_at"]
        state["last_purchase_at"] = at if last is None else max(last, at)
    window = max(model.schedule.purchase_windows)
    # sorted, the oldest purchase comes first: when it is within the window, all are
    if bought or (purchases and not ref - purchases[0][0] < window):
        state["purchases"] = sorted(p for p in purchases if ref - p[0] < window)


def _amount(value: Any) -> float | None:
    """A purchase's amount: a finite number of at least 0, or 0 when there is none usable;
    None for a negative one.

    A numeric string counts (some SDKs and shops send ``"99.90"``). A negative amount is a
    refund sent as an order: it is no purchase, so it moves neither frequency nor recency nor
    the monetary band. NaN, infinities and integers beyond a float come only from producers
    other than ingest (strict JSON); kept, they would turn revenue into NaN and make the state
    unserialisable in a merge's fold (JSON has no NaN)."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return 0.0
    elif isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    try:
        number = float(value)
    except OverflowError:
        return 0.0
    if number < 0 and math.isfinite(number):
        return None
    return number if math.isfinite(number) else 0.0


def _apply_traits(state: State, traits: Mapping[str, Any], at: float) -> None:
    """Keep each scalar trait's latest value and when it was set."""
    held = state["traits"]
    updated: dict[str, Any] | None = None
    for key, value in traits.items():
        before = held.get(key)
        if isinstance(value, str | int | float | bool) and (before is None or at >= before[1]):
            if updated is None:
                updated = dict(held)
            updated[key] = [value, at]
    if updated is not None:
        state["traits"] = updated


@dataclass(slots=True)
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
    oldest_counted: dict[str, int] = field(default_factory=dict)
    """Per counted rule, the oldest day of the count window holding one of its events."""
    contributions: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def metric(self, name: str) -> float:
        """A metric by the name conditions use (``count.<rule>`` included; 0 when none)."""
        return self.metrics.get(name, 0.0)


def measure(
    state: Mapping[str, Any], now: float, model: ScoringModel, *, detail: bool = False
) -> Facts:
    """The person's scores and facts at ``now`` (decay and windows applied).

    Without ``detail`` only the counts the model's conditions test are measured; ``detail``
    adds every rule's count and contribution (for explanations, not every event).
    """
    factor = decay_factor(now - state["engagement_at"], model.half_life_days)
    held = state["engagement"]  # see engagement_points: a stamped state needs no filtering
    if state.get("model") != model.version:
        held = engagement_points(state, model)
    engagement = sum(held.values()) * factor
    rfm = model.rfm
    frequency_window, monetary_window = model.schedule.purchase_windows
    purchases, revenue = 0, 0
    for at, amount in state["purchases"]:
        if now - at < frequency_window:
            purchases += 1
        if now - at < monetary_window:
            revenue = revenue + amount
    bands: tuple[int, int, int] | None = None
    value = 0.0
    if purchases and state["last_purchase_at"] is not None:
        bands = (
            rfm.recency_days.at_most(max(0.0, now - state["last_purchase_at"]) / DAY),
            rfm.frequency.at_least(purchases),
            rfm.monetary.at_least(revenue),
        )
        weights = rfm.weights
        value = (
            bands[0] * weights.recency + bands[1] * weights.frequency + bands[2] * weights.monetary
        ) * model.rfm_unit
    traits = {key: held[0] for key, held in state["traits"].items()}
    fit = 0.0
    if traits:
        for rule in model.fit:
            if rule.trait in traits:
                fit += rule.weight * rule.points.get(str(traits[rule.trait]), 0.0)
    counts, oldest = _counts(state["days"], now, model, every=detail)
    last = state["last_event_at"] or state["first_seen_at"]
    silent, age = max(0.0, now - last) / DAY, max(0.0, now - state["first_seen_at"]) / DAY
    metrics = {
        "value": value,
        "engagement": engagement,
        "fit": fit,
        "total": value + engagement + fit,
        "silent_days": silent,
        "age_days": age,
        "purchases": float(purchases),
        "revenue": revenue,
    }
    for counted, count in counts.items():
        metrics[f"count.{counted}"] = float(count)
    facts = Facts(
        value=value,
        engagement=engagement,
        fit=fit,
        silent_days=silent,
        age_days=age,
        purchases=purchases,
        revenue=revenue,
        rfm=bands,
        counts=counts,
        traits=traits,
        oldest_counted=oldest,
        metrics=metrics,
    )
    if detail:
        facts.contributions = contributions(state, facts, now, model)
    return facts


def _counts(
    days: Mapping[str, Mapping[str, list[Any]]], now: float, model: ScoringModel, *, every: bool
) -> tuple[dict[str, int], dict[str, int]]:
    """Events per rule in the count window ending today (every rule's, or those tested), and
    per rule the oldest day of the window holding one (when the count next drops)."""
    today = _day(now)
    horizon = today - model.count_window_days
    counted = model.counted
    counts: dict[str, int] = {}
    oldest: dict[str, int] = {}
    for rule, per_day in days.items():
        if every or rule in counted:
            count = 0
            first = None
            for day, entry in per_day.items():
                number = int(day)
                if horizon < number <= today and entry[0]:
                    count += entry[0]
                    if first is None or number < first:
                        first = number
            counts[rule] = count
            if first is not None:
                oldest[rule] = first
    return counts, oldest


def contributions(
    state: Mapping[str, Any], facts: Facts, now: float, model: ScoringModel
) -> dict[str, float]:
    """Every rule's share of the scores in ``facts`` (measured at ``now``)."""
    factor = decay_factor(now - state["engagement_at"], model.half_life_days)
    points = engagement_points(state, model)
    shares = {f"engagement.{r}": p * factor for r, p in points.items()}
    if facts.rfm:
        weights = model.rfm.weights
        unit = model.rfm_unit
        for label, band, weight in zip(
            ("recency", "frequency", "monetary"),
            facts.rfm,
            (weights.recency, weights.frequency, weights.monetary),
            strict=True,
        ):
            shares[f"rfm.{label}"] = band * weight * unit
    traits = facts.traits
    for rule in model.fit:
        if rule.trait in traits:
            shares[f"fit.{rule.trait}"] = rule.weight * rule.points.get(
                str(traits[rule.trait]), 0.0
            )
    return shares


def gaps(
    condition: Condition, facts: Facts, stage: str, tags: list[str], margin: float = 0.0
) -> list[str]:
    """The checks of ``condition`` that fail, in words (empty when it holds)."""
    missing = [
        words for holds, words in _checks(condition, facts, stage, tags, margin) if not holds
    ]
    if condition.any_of:
        options = [gaps(a, facts, stage, tags, margin) for a in condition.any_of]
        if all(options):
            missing.append("one of: " + " | ".join(" and ".join(o) for o in options))
    return missing


def terms(
    condition: Condition, facts: Facts, stage: str, tags: list[str], margin: float = 0.0
) -> list[str]:
    """Every check of ``condition``, in words with the value now, whether it holds or not."""
    listed = [words for _, words in _checks(condition, facts, stage, tags, margin)]
    if condition.any_of:
        options = [terms(a, facts, stage, tags, margin) for a in condition.any_of]
        listed.append("one of: " + " | ".join(" and ".join(o) for o in options))
    return listed


def _checks(
    condition: Condition, facts: Facts, stage: str, tags: list[str], margin: float
) -> list[tuple[bool, str]]:
    """Each direct check of ``condition`` (not its alternatives): whether it holds, in words."""
    checks: list[tuple[bool, str]] = []
    for metric, threshold in condition.at_least.items():
        limit = threshold - (margin if metric in SCORES else 0.0)
        value = facts.metric(metric)
        checks.append((value >= limit, f"{metric} >= {limit:g} (now {value:.3f})"))
    for metric, threshold in condition.below.items():
        limit = threshold + (margin if metric in SCORES else 0.0)
        value = facts.metric(metric)
        checks.append((value < limit, f"{metric} < {limit:g} (now {value:.3f})"))
    checks += [(t in tags, f"tag {t}") for t in condition.tags]
    checks += [(t not in tags, f"not tag {t}") for t in condition.not_tags]
    if condition.stages:
        checks.append((stage in condition.stages, f"stage in {condition.stages} (now {stage})"))
    for trait, allowed in condition.traits.items():
        held = facts.traits.get(trait)
        checks.append((held in allowed, f"trait {trait} in {allowed} (now {held!r})"))
    return checks


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
    tags = []
    for name, check in model.tag_checks:
        if check(metrics, traits, stage, ()):
            tags.append(name)
    return tags


@dataclass(slots=True)
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
    metrics, traits = facts.metrics, facts.traits
    chosen = model.tiers[-1].name  # the last tier holds for everyone
    for name, enter, stay in model.tier_checks:
        if (stay if name == current else enter)(metrics, traits, stage, tags):
            chosen = name
            break
    rank = model.tier_rank
    if (
        current in rank
        and rank[chosen] > rank[current]
        and now < state["tier_since"] + model.schedule.dwell[current]
    ):
        return Decision(current, facts, stage, tags, held_by_dwell=True)
    return Decision(chosen, facts, stage, tags, held_by_dwell=False)


JUST_AFTER = 0.001
"""Seconds after a strict boundary its deadline is set. A recency band ends once *more* than
its days have passed, and a decaying score must pass its threshold, whose computed crossing
time can fall a few float ULPs short: evaluated on the boundary itself nothing changed, the
boundary was no longer after *now*, and the change waited for the periodic re-evaluation, a
day later (tests/unit/test_scoring_deadlines.py, the timer firing at each deadline)."""


def next_deadline(
    state: Mapping[str, Any], now: float, model: ScoringModel, facts: Facts | None = None
) -> float:
    """When time alone could next change this person's tier, stage or tags: a silence or age
    threshold, a purchase leaving its window, a recency band, the end of a dwell, engagement
    decaying across a threshold (down, or up from below zero), an event leaving the count
    window of a tested ``count.<rule>`` — and at the latest the periodic re-evaluation."""
    schedule = model.schedule
    last = state["last_event_at"] or state["first_seen_at"]
    first_seen = state["first_seen_at"]
    # plain loops throughout: a comprehension is a function call of its own
    candidates = [now + schedule.reevaluate_after]
    for offset in schedule.silence:
        candidates.append(last + offset)
    for offset in schedule.age:
        candidates.append(first_seen + offset)
    facts = facts or measure(state, now, model)
    if facts.engagement:
        _decay_deadlines(candidates, facts, now, model)
    if facts.oldest_counted:
        _count_deadlines(candidates, facts, model)
    if state["last_purchase_at"] is not None:  # set by the first purchase
        _purchase_deadlines(candidates, state, now, model)
    tier = state["tier"]
    if tier is not None and tier in schedule.dwell:
        candidates.append(state["tier_since"] + schedule.dwell[tier])
    soonest = None
    for candidate in candidates:
        if candidate > now and (soonest is None or candidate < soonest):
            soonest = candidate
    if soonest is None:
        raise ValueError("no deadline after now")
    return soonest


def _purchase_deadlines(
    candidates: list[float], state: Mapping[str, Any], now: float, model: ScoringModel
) -> None:
    """Add when the oldest purchase in each window leaves it, and each recency band ends."""
    schedule = model.schedule
    for window in schedule.purchase_windows:
        # purchases are sorted by time: the first still in the window leaves it first
        for at, _ in state["purchases"]:
            if at + window > now:
                candidates.append(at + window)
                break
    last_purchase = state["last_purchase_at"]
    if last_purchase is not None:
        for offset in schedule.recency:
            candidates.append(last_purchase + offset + JUST_AFTER)


def _decay_deadlines(
    candidates: list[float], facts: Facts, now: float, model: ScoringModel
) -> None:
    """Add when the decaying engagement crosses each engagement or total threshold. It moves
    toward zero from either side (negative points, a complaint, rise back): a target is
    crossed when engagement * 2^(-t/h) equals it, so when both are of one sign and the target
    is nearer zero (0 < target / engagement < 1), after -log2(target / engagement) halvings."""
    engagement = facts.engagement
    schedule = model.schedule
    half_life = model.half_life_days * DAY
    for limit in schedule.engagement_limits:
        ratio = limit / engagement
        if 0.0 < ratio < 1.0:
            candidates.append(now - math.log2(ratio) * half_life + JUST_AFTER)
    others = facts.value + facts.fit
    for limit in schedule.total_limits:
        ratio = (limit - others) / engagement
        if 0.0 < ratio < 1.0:
            candidates.append(now - math.log2(ratio) * half_life + JUST_AFTER)


def _count_deadlines(candidates: list[float], facts: Facts, model: ScoringModel) -> None:
    """Add when the oldest counted day of each tested ``count.<rule>`` leaves the window: the
    count drops then (at the start of the first day past ``day + count_window_days``)."""
    window = model.count_window_days
    counted = model.counted
    for rule, day in facts.oldest_counted.items():
        if rule in counted:
            candidates.append(math.ceil(day + window) * DAY)


@dataclass(slots=True)
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
    if state.get("model") != model.version and state["engagement"].keys() <= model.rule_names:
        state["model"] = model.version  # see engagement_points
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
    current = contributions(state, facts, now, model)
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
    state.update(changes=move.sequence, at_change=current)
    if tier_moved:
        state.update(tier=decision.tier, tier_since=now)
    return move


def _recent_of_both(winner: list[str], absorbed: list[str]) -> str:
    """The ids the merged person remembers: the newest of each side in turn, up to
    ``SEEN_LIMIT``. Both sides' recent events can be delivered again after a merge (the
    winner's to the winner, the absorbed's forwarded to it), so neither may crowd out the
    other: appending one list to the other and keeping the tail dropped every id of the
    winner when the absorbed person had a full list."""
    known = set(winner)
    others = [token for token in absorbed if token not in known]
    kept: list[str] = []
    mine, theirs = len(winner), len(others)
    while (mine or theirs) and len(kept) < SEEN_LIMIT:
        if mine:
            mine -= 1
            kept.append(winner[mine])
        if theirs and len(kept) < SEEN_LIMIT:
            theirs -= 1
            kept.append(others[theirs])
    return "".join(reversed(kept))


def fold(winner: State | None, absorbed: State, model: ScoringModel) -> State:
    """The winner's state with the absorbed person's events folded in (a merge).

    Scores, counts, purchases, caps and traits combine as if every event had carried one id;
    the tier history stays the winner's. A day both people earned on under a cap goes to the
    day's earliest events of the two (:func:`_count_day`); only where a side's times do not
    account for its use does each keep what it earned (clipped at the cap for later events).
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
    days, cap_times, points, weighted = _fold_days(winner, absorbed, ref, model)
    for rule, change in weighted.items():
        engagement[rule] = engagement.get(rule, 0.0) + change
    traits = dict(absorbed["traits"])
    for key, held in winner["traits"].items():
        if key not in traits or held[1] >= traits[key][1]:
            traits[key] = held
    purchases = [*winner["purchases"], *absorbed["purchases"]]
    last_purchases = [p for p in (winner["last_purchase_at"], absorbed["last_purchase_at"]) if p]
    last_events = [e for e in (winner["last_event_at"], absorbed["last_event_at"]) if e]
    merged.update(
        first_seen_at=min(winner["first_seen_at"], absorbed["first_seen_at"]),
        last_event_at=max(last_events) if last_events else None,
        events=winner["events"] + absorbed["events"],
        seen=_recent_of_both(each_seen(winner["seen"]), each_seen(absorbed["seen"])),
        engagement_at=ref,
        engagement=engagement,
        earned={
            r: winner["earned"].get(r, 0.0) + absorbed["earned"].get(r, 0.0) + points.get(r, 0.0)
            for r in {*winner["earned"], *absorbed["earned"]}
        },
        days=days,
        cap_times=cap_times,
        purchases=sorted(purchases),
        last_purchase_at=max(last_purchases) if last_purchases else None,
        traits=traits,
        model=None,  # the absorbed side may hold rules of another model: stamped again
    )
    return merged


def _fold_days(
    winner: Mapping[str, Any], absorbed: Mapping[str, Any], ref: float, model: ScoringModel
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float], dict[str, float]]:
    """Two people's day entries and cap times as one person's, and per rule what the points
    change by where a day both earned on under a cap goes to the earliest events of the two:
    as earned, and decayed to ``ref``. A day whose times do not account for its use on either
    side (see :func:`_count_day`) keeps what each earned, clipped at the cap for later events."""
    rules = {r.name: r for r in model.engagement}
    days: dict[str, Any] = {}
    cap_times: dict[str, Any] = {}
    points: dict[str, float] = {}
    weighted: dict[str, float] = {}
    for name in {*winner["days"], *absorbed["days"]}:
        ours, theirs = winner["days"].get(name, {}), absorbed["days"].get(name, {})
        our_times = winner.get("cap_times", {}).get(name, {})
        their_times = absorbed.get("cap_times", {}).get(name, {})
        rule = rules.get(name)
        shares = rule.cap_shares if rule is not None else ()
        cap = rule.daily_cap if rule is not None else None
        into: dict[str, list[Any]] = {}
        timed: dict[str, list[float]] = {}
        for day in {*ours, *theirs}:
            one, other = ours.get(day), theirs.get(day)
            if one is None or other is None:
                into[day] = list(one if one is not None else other or ())
                held = our_times.get(day) if one is not None else their_times.get(day)
                if held is not None:
                    timed[day] = held
                continue
            count = one[0] + other[0]
            mine, yours = our_times.get(day), their_times.get(day)
            if (
                shares
                and mine is not None
                and yours is not None
                and _accounts_for(mine, one[1], shares)
                and _accounts_for(yours, other[1], shares)
            ):
                times = sorted([*mine, *yours])[: len(shares)]
                used = sum(shares[: len(times)])
                points[name] = points.get(name, 0.0) + used - one[1] - other[1]
                weighted[name] = weighted.get(name, 0.0) + (
                    _shares_at(times, shares, ref, model)
                    - _shares_at(mine, shares, ref, model)
                    - _shares_at(yours, shares, ref, model)
                )
                into[day] = [count, used]
                timed[day] = times
            else:
                total = one[1] + other[1]
                into[day] = [count, min(total, cap) if cap is not None else total]
        days[name] = into
        if timed:
            cap_times[name] = timed
    return days, cap_times, points, weighted
