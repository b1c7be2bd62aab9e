"""The scoring model as data (YAML, validated) — what earns points and where tiers begin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_MODEL_PATH = Path(__file__).with_name("default_model.yaml")


class Strict(BaseModel):
    """Model files are operator input: unknown keys are typos and are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(Strict):
    """Which events a rule applies to; every given field must match."""

    type: str | None = None
    event: str | None = None
    properties: dict[str, str | int | float | bool] = Field(default_factory=dict)

    def matches(self, kind: str, name: str | None, properties: dict[str, Any]) -> bool:
        """True when the event has this type, name and every listed property value."""
        if self.type is not None and self.type != kind:
            return False
        if self.event is not None and self.event != name:
            return False
        return all(properties.get(key) == value for key, value in self.properties.items())


class EngagementRule(Strict):
    """Points for matching events, at most ``daily_cap`` points a day (None: no cap)."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    match: Match
    points: float
    daily_cap: float | None = Field(default=None, gt=0)


class ValueRule(Strict):
    """Monetary value: matching events add ``points_per_unit`` times their amount."""

    match: Match
    amount_property: str = "revenue"
    points_per_unit: float = Field(default=0.1, ge=0)
    max_points: float = Field(default=100.0, gt=0)


class Tier(Strict):
    """A tier entered at ``min_score``; ``silent_days`` makes it a tier of the silent."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    min_score: float = 0.0
    min_silent_days: float | None = Field(default=None, gt=0)


class ScoringModel(Strict):
    """A versioned model: engagement rules with decay, value, and ordered tiers."""

    version: str = Field(min_length=1)
    half_life_days: float = Field(gt=0)
    engagement: list[EngagementRule]
    value: ValueRule
    tiers: list[Tier] = Field(min_length=1, description="Checked in order; first match wins.")
    hysteresis: float = Field(default=5.0, ge=0, description="Points below min to leave a tier.")
    reevaluate_after_days: float = Field(
        default=1.0, gt=0, description="Silent people are re-scored at least this often."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> ScoringModel:
        for label, names in (
            ("engagement rule", [r.name for r in self.engagement]),
            ("tier", [t.name for t in self.tiers]),
        ):
            dupes = {n for n in names if names.count(n) > 1}
            if dupes:
                raise ValueError(f"duplicate {label} names: {sorted(dupes)}")
        if self.tiers[-1].min_score > 0 or self.tiers[-1].min_silent_days is not None:
            raise ValueError("the last tier must catch everyone (min_score <= 0, no silence)")
        return self


def load_model(path: Path = DEFAULT_MODEL_PATH) -> ScoringModel:
    """Read and validate a model file (raises ValueError/ValidationError with the cause)."""
    return ScoringModel.model_validate(yaml.safe_load(path.read_text()))
