"""Scoring metrics, declared once."""

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS, PIPELINE_BUCKETS

EVENTS = Counter(
    "tierflow_scoring_events_total",
    "Records seen by the scoring loop, by outcome (scored, duplicate: an event counted "
    "before, invalid, failed, forwarded, merge, folded, refold: a fold applied before, "
    "erased, reevaluated, ...).",
    ["outcome"],
)
TIER_CHANGES = Counter(
    "tierflow_scoring_tier_changes_total",
    "Tier moves emitted on tierflow.tiers.changes, by from and to tier (stage-only changes "
    "are counted in tierflow_scoring_stage_changes_total).",
    ["from_tier", "to_tier"],
)
STAGE_CHANGES = Counter(
    "tierflow_scoring_stage_changes_total",
    "Lifecycle-stage changes emitted (with or without a tier change), by from and to stage.",
    ["from_stage", "to_stage"],
)
TIER_POPULATION = Gauge(
    "tierflow_scoring_tier_population",
    "People per tier in this worker's partitions (as of the last /metrics scrape).",
    ["tier"],
)
EVENT_TO_CHANGE = Histogram(
    "tierflow_scoring_event_to_tier_change_seconds",
    "From the event's receipt by ingest to its tier change being emitted.",
    buckets=PIPELINE_BUCKETS,
)
TIMER_LATENESS = Histogram(
    "tierflow_scoring_timer_lateness_seconds",
    "How long after a person's deadline the re-evaluation ran.",
    buckets=LATENCY_BUCKETS,
)
BATCH_SECONDS = Histogram(
    "tierflow_scoring_batch_duration_seconds",
    "Time to handle one batch: scoring, handing its messages to the producer, storing its "
    "states, and the changelog flush when one is due.",
    buckets=LATENCY_BUCKETS,
)
TABLE_SIZE = Gauge(
    "tierflow_scoring_table_entries",
    "Entries in this worker's table partitions (people, merge and erasure markers), "
    "scheduled deadlines (one per person), and deadline_heap: the timer heap's entries, "
    "superseded ones included (at most about twice the deadlines).",
    ["table"],
)
PARTITIONS = Gauge(
    "tierflow_scoring_partitions",
    "Partitions of the people table this worker holds (as of the last /metrics scrape): "
    "active, scored here, or standby, its changelog followed so that a failover starts warm.",
    ["role"],
)
REBUILD_SECONDS = Histogram(
    "tierflow_scoring_rebuild_duration_seconds",
    "Time to rebuild the deadline heap, tier population and entry count from the table after "
    "a rebalance (it reads every state of the partitions held, in slices between which the "
    "loop goes on scoring; the timer waits for it).",
    buckets=(0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
REBUILD_FROM_LOOP = Counter(
    "tierflow_scoring_rebuild_from_loop_total",
    "People a rebuild counted from the loop's state rather than the table's scan: those the "
    "loop held unstored when it began (held) and those it scored while the scan ran (scored).",
    ["when"],
)
PROFILES_WRITTEN = Counter(
    "tierflow_scoring_profiles_written_total",
    "Profiles upserted (or deleted) in the Postgres read model.",
    ["operation"],
)
RESUMED_BY_MARKER = Counter(
    "tierflow_scoring_resumed_by_marker_total",
    "Fed partitions a worker resumed from the table's position marker, past the group's "
    "committed offset: 'behind' (commits lag the flushes, normal after a crash) or 'missing' "
    "(no committed offset: expired or lost; without the marker all would be read again).",
    ["topic", "committed"],
)
REFETCHES = Counter(
    "tierflow_scoring_refetches_total",
    "Fed partitions fetched again because a record had been skipped before the scoring loop "
    "(see services/scoring/continuity.py), by topic.",
    ["topic"],
)
