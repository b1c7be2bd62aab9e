"""docker-compose.yml is a valid Compose file and wires the stack the way the docs say."""

from __future__ import annotations

import json
import os
import re
from importlib.metadata import distribution
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from shared.stack.sink import create_app as create_sink
from tests.deploy.support import (
    ALERTS,
    DEPLOY,
    ROOT,
    SECRET_ENV,
    SECRETS_READ,
    SERVICES,
    SETTINGS,
    WEBHOOK_SECRET,
)

COMPOSE = ROOT / "docker-compose.yml"
# `${VAR:-default}` / `${VAR-default}`: what the container gets when the host does not set VAR.
INTERPOLATION = re.compile(r"\$\{\w+:?-([^}]*)\}")


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


def default_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a stock `docker compose up` gives it (defaults interpolated)."""
    env = {}
    for key, value in service.get("environment", {}).items():
        resolved = INTERPOLATION.sub(lambda match: match[1], str(value))
        assert "$" not in resolved, f"{key}={value!r}: no default to resolve"
        env[key] = resolved
    return env


def tierflow_containers(compose: dict[str, Any]) -> set[str]:
    """The services that run the Tierflow image."""
    return {
        name
        for name, service in compose["services"].items()
        if str(service.get("image", "")).startswith("tierflow:")
    }


def assert_hardened(service: dict[str, Any]) -> None:
    """Read-only root, no capabilities, no privilege gain, like the Kubernetes pods."""
    assert service["read_only"] is True
    assert service["tmpfs"] == ["/tmp"]
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]


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
    expected = {"kafka", "postgres", "migrate", "sink", "prometheus", "grafana", *SERVICES}
    assert expected <= set(services)
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
    assert_hardened(service)
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_webhooks_go_to_a_hardened_sink_that_verifies_with_automation_s_secret(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    sink, automation = services["sink"], services["automation"]
    assert sink["image"] == automation["image"]
    assert sink["command"] == ["shared.stack.sink"]
    assert_hardened(sink)
    assert "/healthz" in " ".join(sink["healthcheck"]["test"])
    env, automation_env = default_env(sink), default_env(automation)
    assert env["TIERFLOW_SINK_HOST"] == "0.0.0.0"  # 127.0.0.1 is unreachable from automation
    port = env["TIERFLOW_SINK_PORT"]
    assert f"127.0.0.1:{port}:{port}" in sink["ports"]  # GET /deliveries from the host
    base = urlsplit(automation_env["TIERFLOW_WEBHOOK_BASE_URL"])
    assert (base.hostname, str(base.port)) == ("sink", port)
    assert env[WEBHOOK_SECRET] == automation_env[WEBHOOK_SECRET]
    served = {getattr(route, "path", "") for route in create_sink(env[WEBHOOK_SECRET]).routes}
    assert f"{base.path}/{{channel}}" in served
    assert automation["depends_on"]["sink"]["condition"] == "service_healthy"


def test_every_tierflow_container_has_a_settings_class(compose: dict[str, Any]) -> None:
    """So the two tests below cover every container of the image."""
    assert tierflow_containers(compose) == set(SETTINGS)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_each_container_s_settings_validate_with_the_compose_defaults(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A default the service refuses would crash-loop it on a stock `docker compose up`."""
    for key in list(os.environ):
        if key.startswith("TIERFLOW_"):
            monkeypatch.delenv(key)
    for key, value in default_env(compose["services"][name]).items():
        monkeypatch.setenv(key, value)
    SETTINGS[name]()  # reads the environment as the container's process does


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_each_container_gets_only_the_secrets_it_reads(compose: dict[str, Any], name: str) -> None:
    environment = set(compose["services"][name].get("environment", {}))
    assert environment & SECRET_ENV == SECRETS_READ[name]


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
