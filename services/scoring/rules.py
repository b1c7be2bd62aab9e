"""The scoring model as data (YAML, validated) — what earns points, tags, stages and tiers."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_MODEL_PATH = Path(__file__).with_name("default_model.yaml")

SCORES = frozenset({"value", "engagement", "fit", "total"})
"""Metrics that are scores: hysteresis widens thresholds on these only."""
FACTS = frozenset({"silent_days", "age_days", "purchases", "revenue"})
"""Other metrics a condition can test (``count.<rule>`` too, for each engagement rule)."""

Scalar = str | int | float | bool
Check = Callable[[Mapping[str, float], Mapping[str, Any], str, Collection[str]], bool]
"""A compiled condition: (metrics, traits, stage, tags) -> holds."""


class Strict(BaseModel):
    """Model files are operator input: unknown keys are typos and are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(Strict):
    """Which events a rule applies to; every given field must match."""

    type: str | None = None
    event: str | None = None
    properties: dict[str, Scalar] = Field(default_factory=dict)

    def matches(self, kind: str, name: str | None, properties: dict[str, Any]) -> bool:
        """True when the event has this type, name and every listed property value."""
        if self.type is not None and self.type != kind:
            return False
        if self.event is not None and self.event != name:
            return False
        return all(properties.get(key) == value for key, value in self.properties.items())


class EngagementRule(Strict):
    """Points for matching events, at most ``daily_cap`` points a UTC day (None: no cap)."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    match: Match
    points: float
    daily_cap: float | None = Field(default=None, gt=0)


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
        return 1 + sum(amount >= t for t in self.thresholds)

    def at_most(self, amount: float) -> int:
        """Less is better (recency in days): 5 minus the number of thresholds it exceeds."""
        return 5 - sum(amount > t for t in self.thresholds)


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

    def compile(self, margin: float = 0.0) -> Check:
        """This condition as one function of (metrics, traits, stage, tags), with the score
        thresholds widened by ``margin``: it runs several times per event, so the thresholds
        are resolved once here rather than on every call."""
        lows = tuple((m, t - (margin if m in SCORES else 0.0)) for m, t in self.at_least.items())
        highs = tuple((m, t + (margin if m in SCORES else 0.0)) for m, t in self.below.items())
        tags, not_tags, stages = tuple(self.tags), tuple(self.not_tags), frozenset(self.stages)
        traits = tuple((k, tuple(v)) for k, v in self.traits.items())
        alternatives = tuple(a.compile(margin) for a in self.any_of)

        def scores_hold(metrics: Mapping[str, float]) -> bool:
            for metric, limit in lows:
                if metrics.get(metric, 0.0) < limit:
                    return False
            return all(metrics.get(metric, 0.0) < limit for metric, limit in highs)

        def check(
            metrics: Mapping[str, float], held: Mapping[str, Any], stage: str, has: Collection[str]
        ) -> bool:
            if (lows or highs) and not scores_hold(metrics):
                return False
            if stages and stage not in stages:
                return False
            if (tags or not_tags or traits) and not (
                all(tag in has for tag in tags)
                and not any(tag in has for tag in not_tags)
                and all(held.get(trait) in allowed for trait, allowed in traits)
            ):
                return False
            return not alternatives or any(a(metrics, held, stage, has) for a in alternatives)

        return check


class Named(Strict):
    """A tag, stage or tier: a name and the condition for it (empty: always)."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    when: Condition = Field(default_factory=Condition)


class Tier(Named):
    """A tier; leaving it for a tier listed below it waits ``min_dwell_days`` after entry."""

    min_dwell_days: float = Field(default=0.0, ge=0)


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
                if item.when.uses("tags") or (kind == "stage" and item.when.uses("stages")):
                    raise ValueError(f"{kind} {item.name} may not test tags or stages")
        for kind, items in (("stage", self.stages), ("tier", self.tiers)):
            if items[-1].when != Condition():
                raise ValueError(f"the last {kind} must catch everyone (no condition)")
        return self


def load_model(path: Path = DEFAULT_MODEL_PATH) -> ScoringModel:
    """Read and validate a model file (raises ValueError/ValidationError with the cause)."""
    return ScoringModel.model_validate(yaml.safe_load(path.read_text()))
