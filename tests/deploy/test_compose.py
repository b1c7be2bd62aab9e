"""docker-compose.yml is a valid Compose file and wires the stack the way the docs say."""

from __future__ import annotations

import json
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.support import ALERTS, DEPLOY, ROOT, SERVICES

COMPOSE = ROOT / "docker-compose.yml"


def compose_schema() -> dict[str, Any]:
    """The Compose Specification schema as vendored (and kept current) by check-jsonschema.

    Read as a data file of the installed distribution: only the schema is used, not its CLI.
    """
    vendored = distribution("check-jsonschema").locate_file(
        "check_jsonschema/builtin_schemas/vendor/compose-spec.json"
    )
    return dict(json.loads(Path(str(vendored)).read_text()))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_compose_file_validates_against_the_compose_specification(
    compose: dict[str, Any],
) -> None:
    schema = compose_schema()
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_rejects_a_broken_compose_file(compose: dict[str, Any]) -> None:
    """Guards against a schema that accepts anything (the check above would then prove nothing)."""
    broken = {**compose, "services": {**compose["services"], "kafka": {"image": 3, "bogus": 1}}}
    assert not jsonschema.Draft202012Validator(compose_schema()).is_valid(broken)


def test_stack_has_kafka_kraft_postgres_migrate_services_prometheus_and_grafana(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert {"kafka", "postgres", "migrate", "prometheus", "grafana", *SERVICES} <= set(services)
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert "zookeeper" not in services
    migrate = services["migrate"]
    assert "tierflow db migrate" in migrate["command"][0]
    assert "tierflow topics create" in migrate["command"][0]
    assert migrate["restart"] == "no"


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_is_hardened_healthchecked_and_waits_for_migrations(
    compose: dict[str, Any], name: str
) -> None:
    service = compose["services"][name]
    assert service["command"] == [f"services.{name}"]
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_bind_mounts_exist_and_config_paths_point_at_them(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        mounts = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
                mounts[target] = source
        for key, value in service.get("environment", {}).items():
            if key.endswith("_PATH") and str(value).startswith("/etc/tierflow/"):
                assert value in mounts, f"{name}: {key}={value} is not mounted"


def test_prometheus_loads_the_alert_rules_and_scrapes_every_service_and_the_kafka_exporter(
    compose: dict[str, Any],
) -> None:
    volumes = compose["services"]["prometheus"]["volumes"]
    assert f"./{ALERTS.relative_to(ROOT)}:/etc/prometheus/alerts.yml:ro" in volumes
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {*SERVICES, "kafka-exporter"} <= jobs
    assert "kafka-exporter" in compose["services"]


def test_grafana_provisions_the_datasource_and_the_dashboards(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in volumes
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "tierflow.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
