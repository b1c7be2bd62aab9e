"""Identity metrics, declared once."""

from prometheus_client import Counter, Histogram

from shared.metrics import LATENCY_BUCKETS

RESOLUTIONS = Counter(
    "tierflow_identity_resolutions_total",
    "Events handled, by outcome (resolved, duplicate, suppressed, no_identifier, invalid).",
    ["outcome"],
)
NEW_PERSONS = Counter("tierflow_identity_new_persons_total", "Persons created.")
MERGES = Counter("tierflow_identity_merges_total", "Persons merged, by rule.", ["rule"])
REFUSALS = Counter(
    "tierflow_identity_refused_merges_total",
    "Identifiers dropped from an event because keeping them would break a rule, by rule.",
    ["rule"],
)
CACHE_LOOKUPS = Counter(
    "tierflow_identity_cache_lookups_total",
    "Identifier lookups answered by the cache (hit, checked in the transaction) or Postgres.",
    ["result"],
)
BATCH_SECONDS = Histogram(
    "tierflow_identity_batch_duration_seconds",
    "Time to resolve one poll batch (one transaction, retries included).",
    buckets=LATENCY_BUCKETS,
)
CONFLICT_RETRIES = Counter(
    "tierflow_identity_conflict_retries_total",
    "Transactions re-run because a concurrent worker changed the same part of the graph.",
)
ERASURES = Counter("tierflow_identity_erasures_total", "Persons erased on request.")
SIGHTINGS_PRUNED = Counter(
    "tierflow_identity_dedup_pruned_total",
    "Event-id sightings forgotten because they left the dedup window.",
)
