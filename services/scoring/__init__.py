"""Scoring: per-OneID scores in Faust tables, tiers with hysteresis, tier-change CloudEvents."""
