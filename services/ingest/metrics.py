"""Ingest metrics, declared once, and memoised label lookups for the hot path."""

from functools import lru_cache

from prometheus_client import Counter, Histogram

from shared.metrics import LATENCY_BUCKETS, SIZE_BUCKETS

EVENTS = Counter(
    "tierflow_ingest_events_total",
    "Events received, by source, type and outcome (accepted, rejected, rate_limited, "
    "unavailable: answered 503, the client retries).",
    ["source", "type", "outcome"],
)
REJECTED = Counter(
    "tierflow_ingest_rejected_total",
    "Refusals by reason: of one event each (too_large, missing_id, bad_type, bad_id, "
    "nul_character, invalid, rate_limited) or of a whole request (request_too_large, "
    "malformed_json, bad_gzip, bad_encoding, unauthorized, auth_unavailable, and invalid for "
    "a batch's shape).",
    ["reason"],
)
CLOCK_AHEAD = Counter(
    "tierflow_ingest_clock_ahead_total",
    "Accepted events dated after their arrival (by more than max_clock_ahead_s) whose time was "
    "corrected back, by source: a client with a clock set ahead.",
    ["source"],
)
STALE_KEYS = Counter(
    "tierflow_ingest_stale_keys_total",
    "Requests whose write key Postgres could not check, accepted from the expired cache (keys "
    "it could not check and had not cached are rejected_total{reason=auth_unavailable}). "
    "Rising means ingest runs without its database and revocations wait for it.",
)
PAYLOAD_BYTES = Histogram(
    "tierflow_ingest_request_bytes",
    "Request body sizes after decompression.",
    buckets=SIZE_BUCKETS,
)
PRODUCE_LATENCY = Histogram(
    "tierflow_ingest_produce_duration_seconds",
    "Time from first send to the last Kafka acknowledgement of a request.",
    buckets=LATENCY_BUCKETS,
)
PRODUCE_FAILURES = Counter(
    "tierflow_ingest_produce_failures_total",
    "Requests answered 503 because Kafka did not acknowledge, by error.",
    ["error"],
)


@lru_cache(maxsize=4096)
def events(source: str, kind: str, outcome: str) -> Counter:
    """The ``EVENTS`` child for these labels: ``labels()`` hashes and locks on every call."""
    return EVENTS.labels(source, kind, outcome)


@lru_cache(maxsize=4096)
def clock_ahead(source: str) -> Counter:
    """The ``CLOCK_AHEAD`` child for ``source``."""
    return CLOCK_AHEAD.labels(source)


@lru_cache(maxsize=64)
def rejected(reason: str) -> Counter:
    """The ``REJECTED`` child for ``reason``."""
    return REJECTED.labels(reason)
