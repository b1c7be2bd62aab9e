"""Automation metrics, declared once: outcomes, delivery latency and lag, retries, the
dead-letter size and per-endpoint health."""

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS, PIPELINE_BUCKETS

ACTIONS = Counter(
    "tierflow_automation_actions_total",
    "Action outcomes by playbook, step and outcome.",
    ["playbook", "step", "outcome"],
)
DELIVERY_LATENCY = Histogram(
    "tierflow_automation_delivery_duration_seconds",
    "Webhook round trip of one attempt, by endpoint.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
DELIVERY_LAG = Histogram(
    "tierflow_automation_delivery_lag_seconds",
    "From the moment an action was due (tier change, delay, postponement) to its delivery.",
    ["endpoint"],
    buckets=PIPELINE_BUCKETS,
)
CHANGES_IGNORED = Counter(
    "tierflow_automation_changes_ignored_total",
    "Tier changes that planned nothing because their person was erased or merged into another "
    "(read after the identity notice), by reason.",
    ["reason"],
)
RETRIES = Counter(
    "tierflow_automation_retries_total", "Failed attempts rescheduled, by endpoint.", ["endpoint"]
)
DEADLETTER_SIZE = Gauge(
    "tierflow_automation_deadletter_size", "Actions in the dead-letter, waiting for an operator."
)
ENDPOINT_UP = Gauge(
    "tierflow_automation_endpoint_up",
    "1 while an endpoint's circuit is closed, 0 while it is open.",
    ["endpoint"],
)
ENDPOINT_FAILURES = Counter(
    "tierflow_automation_endpoint_failures_total",
    "Failed attempts by endpoint and kind (http status class, network, circuit).",
    ["endpoint", "kind"],
)
