"""Automation metrics, declared once."""

from prometheus_client import Counter, Histogram

from shared.metrics import LATENCY_BUCKETS

ACTIONS = Counter(
    "tierflow_automation_actions_total",
    "Actions by playbook, step and outcome.",
    ["playbook", "step", "outcome"],
)
DELIVERY_LATENCY = Histogram(
    "tierflow_automation_delivery_duration_seconds",
    "Webhook round trip, by channel.",
    ["channel"],
    buckets=LATENCY_BUCKETS,
)
RETRIES = Counter("tierflow_automation_retries_total", "Delivery retries, by channel.", ["channel"])
