"""Every metric the dashboard and alert rules use is exported by a running Tierflow service.

One embedded stack (the real processes `tierflow up` starts), a little traffic, then /metrics of all
four services. The names come from the running stack, so a renamed metric fails here, not in a
silent empty Grafana panel or an alert that can never fire.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from shared.stack.launcher import StackSettings, start_stack
from tests.deploy.support import (
    EXTERNAL_METRICS,
    SERVICES,
    alert_rules,
    base_name,
    dashboard_exprs,
    exported_names,
    referenced_metrics,
)
from tests.factories import free_port


def referenced() -> dict[str, set[str]]:
    """Metric name -> where the dashboards and alert rules use it."""
    uses: dict[str, set[str]] = {}
    queries = [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()] + dashboard_exprs()
    for where, expr in queries:
        for metric in referenced_metrics(expr):
            uses.setdefault(metric, set()).add(where)
    return uses


async def test_every_referenced_metric_is_exported_by_a_service(tmp_path: Path) -> None:
    settings = StackSettings(
        stack_dir=tmp_path,
        stack_broker_port=free_port(),
        stack_postgres_port=free_port(),
        stack_sink_port=free_port(),
        ingest_port=free_port(),
        identity_port=free_port(),
        scoring_port=free_port(),
        automation_port=free_port(),
        topic_partitions=2,
    )
    stack = await start_stack(settings, demo=False)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for n in range(5):
                accepted = await client.post(
                    f"{stack.urls['ingest']}/v1/track",
                    auth=("dev-write-key", ""),
                    json={"userId": f"metrics-{n % 2}", "event": "Webinar Attended"},
                )
                assert accepted.status_code == 200, accepted.text
            refused = await client.post(
                f"{stack.urls['ingest']}/v1/track", auth=("wrong", ""), json={"userId": "x"}
            )
            assert refused.status_code == 401
            # Let the traffic reach the end of the pipeline (a webhook at the sink) so the
            # scrape sees services that have done work; the names do not depend on it.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if (await client.get(stack.urls["sink"])).json():
                    break
                await asyncio.sleep(0.5)
            exported: dict[str, set[str]] = {}
            for service in SERVICES:
                page = await client.get(f"{stack.urls[service]}/metrics")
                assert page.status_code == 200, service
                exported[service] = exported_names(page.text)
    finally:
        stack.stop()

    everything = set().union(*exported.values())
    for service in SERVICES:
        assert any(name.startswith(f"tierflow_{service}_") for name in exported[service]), service
    missing = {
        metric: sorted(uses)
        for metric, uses in referenced().items()
        if metric not in EXTERNAL_METRICS
        and metric not in everything
        and base_name(metric) not in everything
    }
    assert missing == {}, "used by the dashboard/alerts but exported by no service"
    foreign = {m for m in referenced() if not m.startswith("tierflow_")}
    assert foreign <= set(EXTERNAL_METRICS), "non-Tierflow metric without a documented exporter"
