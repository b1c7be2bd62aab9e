"""What the deploy tests share: paths, kustomize rendering, and metric names in PromQL."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import promql_parser
import yaml
from pydantic_settings import BaseSettings

from services.automation.settings import AutomationSettings
from services.identity.settings import IdentitySettings
from services.ingest.settings import IngestSettings
from services.scoring.settings import ScoringSettings
from shared.settings import CommonSettings
from shared.stack.sink import SinkSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "prod")
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
OPERATIONS = ROOT / "docs" / "operations.md"
SERVICES = ("ingest", "identity", "scoring", "automation")

# The settings class each container of the image builds (compose service / k8s app name).
SETTINGS: dict[str, type[BaseSettings]] = {
    "migrate": CommonSettings,  # `tierflow db migrate` and `topics create`
    "ingest": IngestSettings,
    "identity": IdentitySettings,
    "scoring": ScoringSettings,
    "automation": AutomationSettings,
    "sink": SinkSettings,
}
# Secrets go only where they are read: a leak from the internet-facing ingest, or from any pod,
# must not hand out the operator token or the webhook signing key.
DATABASE_URL = "TIERFLOW_DATABASE_URL"
ADMIN_TOKEN = "TIERFLOW_ADMIN_TOKEN"
WEBHOOK_SECRET = "TIERFLOW_WEBHOOK_SECRET"
SUPPRESSION_KEY = "TIERFLOW_IDENTITY_SUPPRESSION_KEY"
SECRET_ENV = frozenset({DATABASE_URL, ADMIN_TOKEN, WEBHOOK_SECRET, SUPPRESSION_KEY})
SECRETS_READ = {
    "migrate": {DATABASE_URL},
    "ingest": {DATABASE_URL},
    "identity": {DATABASE_URL, ADMIN_TOKEN, SUPPRESSION_KEY},
    "scoring": {DATABASE_URL},
    "automation": {DATABASE_URL, ADMIN_TOKEN, WEBHOOK_SECRET},
    "sink": {WEBHOOK_SECRET},
}

# Metrics the dashboard and alerts may use that no Tierflow service exports, and who does.
EXTERNAL_METRICS = {
    "up": "Prometheus itself",
    "kafka_consumergroup_lag": "kafka-exporter (compose) / Strimzi Kafka Exporter (Kubernetes)",
    "kafka_topic_partition_current_offset": "kafka-exporter / Strimzi Kafka Exporter",
}
# Grafana's built-in variables, replaced by a plausible value so the query parses as PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def settings_env_names(settings: type[BaseSettings]) -> set[str]:
    """The environment variables a settings class reads (an alias replaces the prefix)."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    names = set()
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        assert alias is None or isinstance(alias, str), f"{name}: handle {alias!r} here"
        names.add((alias or prefix + name).upper())
    return names


@cache
def sync_module() -> ModuleType:
    """deploy/sync.py, which owns the derived deploy files (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("deploy_sync", DEPLOY / "sync.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def _render_yaml(overlay: str) -> str:
    # pykustomize runs kustomize's Go build in-process; its coroutine gets a loop of its own
    # in a worker thread so this works whether or not the caller is inside an event loop.
    import pykustomize

    async def build() -> str:
        result = await pykustomize.build(str(K8S / "overlays" / overlay))
        return str(result.yaml)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, build()).result()


def render(overlay: str) -> list[dict[str, Any]]:
    """The overlay's manifests as `kubectl kustomize deploy/k8s/overlays/<overlay>` prints them."""
    return [doc for doc in yaml.safe_load_all(_render_yaml(overlay)) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """The rendered resources of one kind, by name."""
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of every group in the alerts file."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(dashboard panel title, PromQL expression) for every query of every checked-in dashboard."""
    found = []
    for path in DASHBOARDS:
        stack = list(json.loads(path.read_text())["panels"])
        while stack:
            panel = stack.pop()
            stack.extend(panel.get("panels", []))
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
    return found


def parse_promql(expr: str) -> Any:
    """The PromQL AST (raises ValueError on a syntax error), Grafana variables substituted."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return promql_parser.parse(expr)


def referenced_metrics(expr: str) -> set[str]:
    """Metric names an expression selects, histogram series folded to their base name."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(parse_promql(expr), pre_visit=visit)
    return names


def exported_names(exposition: str) -> set[str]:
    """Every name a /metrics page exports, including families that have no sample yet.

    prometheus_client writes HELP/TYPE for every registered metric, so a labelled counter that
    was never incremented still counts. Histograms also answer to their base name.
    """
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    for name in list(names):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                names.add(name.removesuffix(suffix))
    return names


def base_name(metric: str) -> str:
    """A histogram series name without its _bucket/_sum/_count suffix."""
    for suffix in HISTOGRAM_SUFFIXES:
        if metric.endswith(suffix):
            return metric.removesuffix(suffix)
    return metric


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors
