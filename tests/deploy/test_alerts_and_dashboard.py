"""Alert rules and dashboards parse, follow the conventions, and link to existing runbooks.

These are the checks `promtool check rules` makes that matter here, done in Python: valid YAML,
unique alert names, PromQL that parses, valid `for` durations, and required labels/annotations.
Whether the metrics they use exist is checked against a running stack (test_metrics_exported).
"""

from __future__ import annotations

import json
import re
from typing import Any

import promql_parser
import pytest
import yaml

from tests.deploy.support import (
    ALERTS,
    DASHBOARDS,
    OPERATIONS,
    ROOT,
    alert_rules,
    base_name,
    dashboard_exprs,
    exported_names,
    github_anchors,
    parse_promql,
    referenced_metrics,
)

RULES = alert_rules()
# What the brief asks to alert on, and the dashboard panels it asks for. By alert and panel name,
# not metric name: which metrics exist is read from a running stack (test_metrics_exported).
REQUIRED_ALERTS = {
    "TierflowConsumerLagGrowing",
    "TierflowDeadLetterTopicGrowing",
    "TierflowActionsDeadLettered",
    "TierflowWebhookFailureRateHigh",
    "TierflowIngest5xxRateHigh",
    "TierflowIngest503RateHigh",
    "TierflowTimerLate",
}
REQUIRED_PANELS = {
    "Events in by source and outcome",
    "Per-stage throughput",
    "Consumer lag by group",
    "Event → tier change",
    "Tier change → delivery",
    "Tier populations",
    "Tier transitions",
    "Actions by outcome",
    "Dead letters",
}


def test_alerts_file_is_a_rule_file_with_unique_alert_names() -> None:
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"}
    for group in document["groups"]:
        assert set(group) <= {"name", "rules", "interval", "limit"}
        assert group["rules"]
    names = [rule["alert"] for rule in RULES]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"Tierflow[A-Za-z0-9]+", name) for name in names)


@pytest.mark.parametrize("rule", RULES, ids=[r["alert"] for r in RULES])
def test_each_rule_has_expr_for_labels_annotations_and_a_runbook(rule: dict[str, Any]) -> None:
    assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
    parse_promql(rule["expr"])
    assert re.fullmatch(r"\d+[smh]", rule["for"])
    if rule["for"] != "0m":  # 0m (fire at once) is valid in a rule but not a PromQL duration
        promql_parser.parse_duration(rule["for"])
    assert rule["labels"]["severity"] in {"page", "ticket"}
    annotations = rule["annotations"]
    assert {"summary", "description", "runbook_url"} <= set(annotations)
    path, _, anchor = annotations["runbook_url"].partition("#")
    assert (ROOT / path) == OPERATIONS
    assert anchor == rule["alert"].lower()
    assert anchor in github_anchors(OPERATIONS.read_text()), f"no runbook section {anchor}"


def test_every_runbook_section_belongs_to_an_alert() -> None:
    sections = re.findall(r"^### (Tierflow\w+)$", OPERATIONS.read_text(), flags=re.MULTILINE)
    assert sorted(sections) == sorted(rule["alert"] for rule in RULES)


def test_alerts_cover_every_required_signal() -> None:
    assert REQUIRED_ALERTS - {rule["alert"] for rule in RULES} == set()


def test_a_syntax_error_is_caught() -> None:
    with pytest.raises(ValueError, match=r"\w"):
        parse_promql("sum(rate(tierflow_ingest_events_total[5m])")


def test_dashboards_are_provisionable_and_every_query_parses() -> None:
    assert DASHBOARDS
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"]
        assert dashboard["title"]
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))
    for title, expr in dashboard_exprs():
        try:
            parse_promql(expr)
        except ValueError as error:
            raise AssertionError(f"{title}: {expr}: {error}") from error


def test_dashboard_shows_the_whole_pipeline() -> None:
    titles = {title.partition(": ")[2] for title, _ in dashboard_exprs()}
    assert REQUIRED_PANELS - titles == set()


def test_exported_names_count_families_without_samples_and_histogram_series() -> None:
    exposition = "\n".join(
        [
            "# HELP tierflow_x_total Things.",
            "# TYPE tierflow_x_total counter",
            "# HELP tierflow_y_seconds Time.",
            "# TYPE tierflow_y_seconds histogram",
            'tierflow_y_seconds_bucket{le="1.0"} 2.0',
            "tierflow_y_seconds_count 2.0",
        ]
    )
    names = exported_names(exposition)
    assert {"tierflow_x_total", "tierflow_y_seconds", "tierflow_y_seconds_bucket"} <= names
    assert base_name("tierflow_y_seconds_sum") == "tierflow_y_seconds"
    rate = 'rate(tierflow_y_seconds_bucket{a="b"}[$__rate_interval])'
    expr = f"histogram_quantile(0.9, sum by (le) ({rate})) / on() group_left up"
    assert referenced_metrics(expr) == {"tierflow_y_seconds_bucket", "up"}
