"""Identity metrics, declared once."""

from prometheus_client import Counter

RESOLUTIONS = Counter(
    "tierflow_identity_resolutions_total",
    "Events resolved, by outcome (resolved, duplicate, no_identifier, invalid).",
    ["outcome"],
)
NEW_PERSONS = Counter("tierflow_identity_new_persons_total", "Persons created.")
MERGES = Counter("tierflow_identity_merges_total", "Persons merged, by rule.", ["rule"])
KNOWN_IDENTIFIERS = Counter(
    "tierflow_identity_known_identifiers_total",
    "Identifiers of a batch already in the graph (hits against the stored graph).",
)
CONFLICT_RETRIES = Counter(
    "tierflow_identity_conflict_retries_total",
    "Batches re-planned because a concurrent worker changed the same part of the graph.",
)
SIGHTINGS_PRUNED = Counter(
    "tierflow_identity_dedup_pruned_total",
    "Event-id sightings forgotten because they left the dedup window.",
)
