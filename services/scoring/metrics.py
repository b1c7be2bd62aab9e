"""Scoring metrics, declared once."""

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import PIPELINE_BUCKETS

EVENTS = Counter(
    "tierflow_scoring_events_total",
    "Resolved events seen, by outcome (scored, duplicate, invalid, failed).",
    ["outcome"],
)
TIER_CHANGES = Counter(
    "tierflow_scoring_tier_changes_total",
    "Tier changes emitted, by from and to tier.",
    ["from_tier", "to_tier"],
)
EVENT_TO_CHANGE = Histogram(
    "tierflow_scoring_event_to_tier_change_seconds",
    "From the event's receipt by ingest to its tier change being emitted.",
    buckets=PIPELINE_BUCKETS,
)
PEOPLE = Gauge("tierflow_scoring_people", "People in this worker's table partitions.")
