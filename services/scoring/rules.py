"""The scoring model as data (YAML, validated) — what earns points, tags, stages and tiers."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.contracts import EventType

DEFAULT_MODEL_PATH = Path(__file__).with_name("default_model.yaml")
DAY = 86_400.0

SCORES = frozenset({"value", "engagement", "fit", "total"})
"""Metrics that are scores: hysteresis widens thresholds on these only."""
FACTS = frozenset({"silent_days", "age_days", "purchases", "revenue"})
"""Other metrics a condition can test (``count.<rule>`` too, for each engagement rule)."""

Scalar = str | int | float | bool
Check = Callable[[Mapping[str, float], Mapping[str, Any], str, Collection[str]], bool]
"""A compiled condition: (metrics, traits, stage, tags) -> holds."""


class Strict(BaseModel):
    """Model files are operator input: unknown keys are typos and are refused, and so is every
    infinite or NaN number (``.inf`` in a window crashed every event; ``.nan`` points put
    everyone in the first tier, then failed once the state was stored and read back)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Match(Strict):
    """Which events a rule applies to; every given field must match."""

    type: EventType | None = None
    event: str | None = None
    properties: dict[str, Scalar] = Field(default_factory=dict)

    def matches(self, kind: str, name: str | None, properties: Mapping[str, Any]) -> bool:
        """True when the event has this type, name and every listed property value."""
        if self.type is not None and self.type != kind:
            return False
        if self.event is not None and self.event != name:
            return False
        return _has(properties, self.properties.items())


def _has(properties: Mapping[str, Any], required: Iterable[tuple[str, Scalar]]) -> bool:
    # loops rather than all()/any() here and in the checks below: no generator per call
    for key, value in required:  # noqa: SIM110
        if properties.get(key) != value:
            return False
    return True


R = TypeVar("R")


class RuleIndex(Generic[R]):
    """Rules by the event type and name they accept, in order: an event is tested only against
    the rules that could match it (the keys are the model's own types and names, so bounded)."""

    def __init__(self, rules: Sequence[tuple[Match, R]]) -> None:
        self._types = {m.type for m, _ in rules if m.type is not None}
        self._names = {m.event for m, _ in rules if m.event is not None}
        self._rules = {
            (kind, name): tuple(
                (tuple(m.properties.items()), rule)
                for m, rule in rules
                if m.type in (None, kind) and m.event in (None, name)
            )
            for kind in (*self._types, None)
            for name in (*self._names, None)
        }

    def first(self, kind: str, name: str | None, properties: Mapping[str, Any]) -> R | None:
        """The first rule whose match accepts the event, or None."""
        key = (
            kind if kind in self._types else None,
            name if name in self._names else None,
        )
        for required, rule in self._rules[key]:
            if _has(properties, required):
                return rule
        return None


CAP_SHARES_LIMIT = 32
"""At most this many earning times are kept per capped rule and day (see ``cap_shares``)."""


class EngagementRule(Strict):
    """Points for matching events, at most ``daily_cap`` points a UTC day (None: no cap)."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    match: Match
    points: float
    daily_cap: float | None = Field(default=None, gt=0)

    @cached_property
    def cap_shares(self) -> tuple[float, ...]:
        """What the day's earliest matching events earn under the cap, in time order (the
        rest earn nothing); empty when the rule has no cap, does not earn, or would need more
        than ``CAP_SHARES_LIMIT`` events to reach it (then a late event is capped by what the
        day has used, in arrival order)."""
        if self.daily_cap is None or self.points <= 0:
            return ()
        slots = math.ceil(self.daily_cap / self.points)
        if slots > CAP_SHARES_LIMIT:
            return ()
        return tuple(
            max(0.0, min(self.points, self.daily_cap - n * self.points)) for n in range(slots)
        )


class Bands(Strict):
    """Four ascending thresholds that map a number to a 1-5 score."""

    thresholds: tuple[float, float, float, float]

    @model_validator(mode="after")
    def _ascending(self) -> Bands:
        if list(self.thresholds) != sorted(set(self.thresholds)):
            raise ValueError("thresholds must be strictly ascending")
        return self

    def at_least(self, amount: float) -> int:
        """More is better: 1 plus the number of thresholds ``amount`` reaches."""
        band = 1
        for threshold in self.thresholds:
            if amount >= threshold:
                band += 1
        return band

    def at_most(self, amount: float) -> int:
        """Less is better (recency in days): 5 minus the number of thresholds it exceeds."""
        band = 5
        for threshold in self.thresholds:
            if amount > threshold:
                band -= 1
        return band


class RfmWeights(Strict):
    """How much recency, frequency and monetary each weigh in the value score."""

    recency: float = Field(default=1.0, ge=0)
    frequency: float = Field(default=1.0, ge=0)
    monetary: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _positive(self) -> RfmWeights:
        if self.recency + self.frequency + self.monetary <= 0:
            raise ValueError("at least one RFM weight must be positive")
        return self


class Rfm(Strict):
    """Value from purchases: R, F, M each 1-5, weighted, times ``scale`` (0 with no purchase
    in the frequency window)."""

    match: Match
    amount_property: str = "revenue"
    recency_days: Bands = Field(description="Days since the last purchase; fewer is better.")
    frequency: Bands = Field(description="Purchases within frequency_window_days.")
    frequency_window_days: float = Field(default=365, gt=0)
    monetary: Bands = Field(description="Sum of amounts within monetary_window_days.")
    monetary_window_days: float = Field(default=365, gt=0)
    weights: RfmWeights = Field(default_factory=RfmWeights)
    scale: float = Field(default=20.0, gt=0, description="5 in every band scores 5 x scale.")


class FitRule(Strict):
    """Attribute fit: ``weight`` x the points listed for the person's value of ``trait``."""

    trait: str
    weight: float = 1.0
    points: dict[str, float]


class Condition(Strict):
    """Checks that must all hold; ``any_of`` adds alternatives of which one must hold.

    Metrics: value, engagement, fit, total (scores), silent_days, age_days, purchases,
    revenue, and ``count.<rule>`` (events matching an engagement rule in the count window).
    """

    at_least: dict[str, float] = Field(default_factory=dict)
    below: dict[str, float] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    not_tags: list[str] = Field(default_factory=list)
    stages: list[str] = Field(default_factory=list)
    traits: dict[str, list[Scalar]] = Field(default_factory=dict)
    any_of: list[Condition] = Field(default_factory=list)

    def metrics(self) -> set[str]:
        """Every metric this condition (and its alternatives) tests."""
        names = {*self.at_least, *self.below}
        for alternative in self.any_of:
            names |= alternative.metrics()
        return names

    def thresholds(self) -> list[tuple[str, float]]:
        """Every (metric, threshold) pair, for scheduling re-evaluations."""
        pairs = [*self.at_least.items(), *self.below.items()]
        for alternative in self.any_of:
            pairs += alternative.thresholds()
        return pairs

    def uses(self, field: str) -> bool:
        """True when this condition or an alternative tests tags or stages (``field``)."""
        return bool(getattr(self, field)) or any(a.uses(field) for a in self.any_of)

    def names(self, *fields: str) -> set[str]:
        """Every tag or stage name (from ``fields``) this condition and its alternatives test."""
        found = {name for field in fields for name in getattr(self, field)}
        for alternative in self.any_of:
            found |= alternative.names(*fields)
        return found

    def compile(self, margin: float = 0.0) -> Check:
        """This condition as one function of (metrics, traits, stage, tags), with the score
        thresholds widened by ``margin``. Conditions run a dozen times per event, so each test
        is resolved once here into a small closure, and a condition of one test (most are)
        is that closure itself."""
        tests: list[Check] = [
            *(_at_least(m, t - (margin if m in SCORES else 0.0)) for m, t in self.at_least.items()),
            *(_below(m, t + (margin if m in SCORES else 0.0)) for m, t in self.below.items()),
        ]
        if self.stages:
            tests.append(_in_stages(frozenset(self.stages)))
        tests += [_tagged(tag) for tag in self.tags]
        tests += [_not_tagged(tag) for tag in self.not_tags]
        tests += [_trait_in(trait, tuple(allowed)) for trait, allowed in self.traits.items()]
        if self.any_of:
            tests.append(_any_of(tuple(a.compile(margin) for a in self.any_of)))
        return _all_of(tuple(tests))


def _at_least(metric: str, limit: float) -> Check:
    def check(metrics: Mapping[str, float], held: Any, stage: str, has: Collection[str]) -> bool:
        return not metrics.get(metric, 0.0) < limit

    return check


def _below(metric: str, limit: float) -> Check:
    def check(metrics: Mapping[str, float], held: Any, stage: str, has: Collection[str]) -> bool:
        return metrics.get(metric, 0.0) < limit

    return check


def _in_stages(stages: frozenset[str]) -> Check:
    def check(metrics: Mapping[str, float], held: Any, stage: str, has: Collection[str]) -> bool:
        return stage in stages

    return check


def _tagged(tag: str) -> Check:
    def check(metrics: Mapping[str, float], held: Any, stage: str, has: Collection[str]) -> bool:
        return tag in has

    return check


def _not_tagged(tag: str) -> Check:
    def check(metrics: Mapping[str, float], held: Any, stage: str, has: Collection[str]) -> bool:
        return tag not in has

    return check


def _trait_in(trait: str, allowed: tuple[Scalar, ...]) -> Check:
    def check(
        metrics: Mapping[str, float], held: Mapping[str, Any], stage: str, has: Collection[str]
    ) -> bool:
        return held.get(trait) in allowed

    return check


def _any_of(alternatives: tuple[Check, ...]) -> Check:
    def check(
        metrics: Mapping[str, float], held: Mapping[str, Any], stage: str, has: Collection[str]
    ) -> bool:
        for alternative in alternatives:  # noqa: SIM110
            if alternative(metrics, held, stage, has):
                return True
        return False

    return check


def _always(
    metrics: Mapping[str, float], held: Mapping[str, Any], stage: str, has: Collection[str]
) -> bool:
    return True


def _all_of(tests: tuple[Check, ...]) -> Check:
    if not tests:
        return _always
    if len(tests) == 1:
        return tests[0]

    def check(
        metrics: Mapping[str, float], held: Mapping[str, Any], stage: str, has: Collection[str]
    ) -> bool:
        for test in tests:  # noqa: SIM110
            if not test(metrics, held, stage, has):
                return False
        return True

    return check


class Named(Strict):
    """A tag, stage or tier: a name and the condition for it (empty: always)."""

    # the read model, automation and the contracts store names in 64 characters
    name: str = Field(pattern=r"^[a-z0-9_]+$", max_length=64)
    when: Condition = Field(default_factory=Condition)


class Tier(Named):
    """A tier; leaving it for a tier listed below it waits ``min_dwell_days`` after entry."""

    min_dwell_days: float = Field(default=0.0, ge=0)


@dataclass(frozen=True)
class Schedule:
    """What deadlines are computed from, in seconds, resolved once per model."""

    reevaluate_after: float
    silence: tuple[float, ...]
    age: tuple[float, ...]
    engagement_limits: tuple[float, ...]
    total_limits: tuple[float, ...]
    purchase_windows: tuple[float, float]
    recency: tuple[float, ...]
    dwell: dict[str, float]


class ScoringModel(Strict):
    """A versioned model: engagement with decay, RFM value, fit, tags, stages, ordered tiers."""

    version: str = Field(min_length=1)
    half_life_days: float = Field(gt=0, description="Engagement halves after this long.")
    count_window_days: float = Field(default=90, gt=0, description="Window of count.<rule>.")
    engagement: list[EngagementRule]
    rfm: Rfm
    fit: list[FitRule] = Field(default_factory=list)
    tags: list[Named] = Field(default_factory=list)
    stages: list[Named] = Field(min_length=1, description="Checked in order; first wins.")
    tiers: list[Tier] = Field(min_length=1, description="Checked in order; first wins.")
    hysteresis: float = Field(default=5.0, ge=0, description="Score margin to leave a tier.")
    reevaluate_after_days: float = Field(
        default=1.0, gt=0, description="Silent people are re-evaluated at least this often."
    )

    @cached_property
    def thresholds(self) -> tuple[tuple[str, float], ...]:
        """Every (metric, threshold) any stage, tag or tier tests: where time alone can move
        a person, so where deadlines go."""
        pairs = [
            p for item in [*self.stages, *self.tags, *self.tiers] for p in item.when.thresholds()
        ]
        return tuple(dict.fromkeys(pairs))

    @cached_property
    def stage_checks(self) -> tuple[tuple[str, Check], ...]:
        """Each stage with its compiled condition, in order."""
        return tuple((s.name, s.when.compile()) for s in self.stages)

    @cached_property
    def tag_checks(self) -> tuple[tuple[str, Check], ...]:
        """Each tag with its compiled condition, in order."""
        return tuple((t.name, t.when.compile()) for t in self.tags)

    @cached_property
    def tier_checks(self) -> tuple[tuple[str, Check, Check], ...]:
        """Each tier with its condition compiled to enter it and (widened by ``hysteresis``)
        to stay in it, in order."""
        return tuple(
            (t.name, t.when.compile(), t.when.compile(self.hysteresis)) for t in self.tiers
        )

    @cached_property
    def engagement_index(self) -> RuleIndex[EngagementRule]:
        """The engagement rules indexed by the events they can match."""
        return RuleIndex([(r.match, r) for r in self.engagement])

    @cached_property
    def rule_names(self) -> frozenset[str]:
        """The engagement rules' names (what a state's points are kept under)."""
        return frozenset(r.name for r in self.engagement)

    @cached_property
    def counted(self) -> frozenset[str]:
        """The engagement rules whose ``count.<rule>`` a condition tests: the only counts an
        evaluation needs."""
        tested = {
            m for item in [*self.stages, *self.tags, *self.tiers] for m in item.when.metrics()
        }
        return frozenset(r.name for r in self.engagement if f"count.{r.name}" in tested)

    @cached_property
    def tier_rank(self) -> dict[str, int]:
        """Each tier's position in the model (0 is checked first)."""
        return {t.name: n for n, t in enumerate(self.tiers)}

    @cached_property
    def rfm_unit(self) -> float:
        """Points per weighted RFM band: ``scale`` over the sum of the weights."""
        weights = self.rfm.weights
        return self.rfm.scale / sum((weights.recency, weights.frequency, weights.monetary))

    @cached_property
    def schedule(self) -> Schedule:
        """The thresholds where time alone moves a person, as offsets in seconds."""
        pairs = self.thresholds
        limits = {
            metric: tuple(
                limit
                for m, threshold in pairs
                if m == metric
                # a held tier's margin: at_least widens down, below widens up
                for limit in (threshold, threshold - self.hysteresis, threshold + self.hysteresis)
            )
            for metric in ("engagement", "total")
        }
        return Schedule(
            reevaluate_after=self.reevaluate_after_days * DAY,
            silence=tuple(t * DAY for m, t in pairs if m == "silent_days"),
            age=tuple(t * DAY for m, t in pairs if m == "age_days"),
            engagement_limits=limits["engagement"],
            total_limits=limits["total"],
            purchase_windows=(
                self.rfm.frequency_window_days * DAY,
                self.rfm.monetary_window_days * DAY,
            ),
            recency=tuple(d * DAY for d in self.rfm.recency_days.thresholds),
            dwell={t.name: t.min_dwell_days * DAY for t in self.tiers},
        )

    @model_validator(mode="after")
    def _consistent(self) -> ScoringModel:
        for label, names in (
            ("engagement rule", [r.name for r in self.engagement]),
            ("tag", [t.name for t in self.tags]),
            ("stage", [s.name for s in self.stages]),
            ("tier", [t.name for t in self.tiers]),
        ):
            dupes = {n for n in names if names.count(n) > 1}
            if dupes:
                raise ValueError(f"duplicate {label} names: {sorted(dupes)}")
        known = SCORES | FACTS | {f"count.{r.name}" for r in self.engagement}
        for kind, items in (("stage", self.stages), ("tag", self.tags), ("tier", self.tiers)):
            for item in items:
                unknown = item.when.metrics() - known
                if unknown:
                    raise ValueError(f"{kind} {item.name}: unknown metrics {sorted(unknown)}")
        for kind, items in (("stage", self.stages), ("tag", self.tags)):
            for item in items:
                tests_tags = item.when.uses("tags") or item.when.uses("not_tags")
                if tests_tags or (kind == "stage" and item.when.uses("stages")):
                    raise ValueError(f"{kind} {item.name} may not test tags or stages")
        for kind, items in (("stage", self.stages), ("tier", self.tiers)):
            if items[-1].when != Condition():
                raise ValueError(f"the last {kind} must catch everyone (no condition)")
        return self

    @model_validator(mode="after")
    def _defined_names(self) -> ScoringModel:
        """A misspelt tag or stage in a condition would never hold, silently."""
        defined = {"tags": {t.name for t in self.tags}, "stages": {s.name for s in self.stages}}
        for kind, items in (("tag", self.tags), ("tier", self.tiers)):
            for item in items:
                for field, fields in (("tags", ("tags", "not_tags")), ("stages", ("stages",))):
                    unknown = item.when.names(*fields) - defined[field]
                    if unknown:
                        raise ValueError(f"{kind} {item.name}: unknown {field} {sorted(unknown)}")
        return self


def load_model(path: Path = DEFAULT_MODEL_PATH) -> ScoringModel:
    """Read and validate a model file (raises ValueError/ValidationError with the cause)."""
    return ScoringModel.model_validate(yaml.safe_load(path.read_text()))
