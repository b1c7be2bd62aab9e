"""The rendered kustomize overlays are valid Kubernetes and deploy the services safely."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from services.automation.settings import AutomationSettings
from shared.topics import ALL_TOPICS
from tests.deploy.support import (
    K8S,
    OVERLAYS,
    SECRET_ENV,
    SECRETS_READ,
    SERVICES,
    SETTINGS,
    WEBHOOK_SECRET,
    by_kind,
    render,
    settings_env_names,
    sync_module,
)

CONSUMERS = {
    # deployment: (consumer group KEDA scales on, topic it reads or None for all of the group's)
    "identity": ("tierflow-identity", "tierflow.events.raw"),
    "scoring": ("tierflow-scoring", None),
    "automation": ("tierflow-automation", "tierflow.tiers.changes"),
}
# Custom resources of operators (Strimzi, KEDA, Prometheus operator): kubernetes-validate only
# ships the built-in API, so these are checked field by field in the tests below.
CUSTOM_KINDS = {"KafkaTopic", "ScaledObject", "ServiceMonitor", "PrometheusRule"}
# The config files each service mounts from a ConfigMap, and the env var that points at them.
CONFIG_FILES = {
    "identity": ("TIERFLOW_IDENTITY_RULES_PATH", "tierflow-identity-rules", "identity-rules.yaml"),
    "scoring": ("TIERFLOW_SCORING_MODEL_PATH", "tierflow-scoring-model", "scoring-model.yaml"),
    "automation": ("TIERFLOW_PLAYBOOKS_PATH", "tierflow-playbooks", "playbooks.yaml"),
}


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def prod_partitions() -> int:
    return int(sync_module().prod_literals()["TIERFLOW_TOPIC_PARTITIONS"])


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) matches these labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value, values = labels.get(expression["key"]), expression.get("values", [])
        matches = {
            "In": value in values,
            "NotIn": value not in values,
            "Exists": value is not None,
            "DoesNotExist": value is None,
        }[expression["operator"]]
        if not matches:
            return False
    return True


def admits(policies: list[dict[str, Any]], to: dict[str, str], source: dict[str, str]) -> bool:
    """Whether some NetworkPolicy lets a pod of this namespace reach another's `http` port."""
    for policy in policies:
        spec = policy["spec"]
        if not selects(spec["podSelector"], to):
            continue
        for rule in spec.get("ingress", []):
            ports = [port["port"] for port in rule.get("ports", [{"port": "http"}])]
            peers = rule.get("from", [{"podSelector": {}}])
            from_source = any(
                "namespaceSelector" not in peer
                and "podSelector" in peer
                and selects(peer["podSelector"], source)
                for peer in peers
            )
            if "http" in ports and from_source:
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_validates_against_the_current_kubernetes_schemas(overlay: str) -> None:
    version = latest_version()
    assert tuple(int(p) for p in version.split(".")[:2]) >= (1, 33)
    errors = []
    for doc in render(overlay):
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {error.message}")
    assert errors == []


def test_validation_catches_a_broken_manifest() -> None:
    """Guards against a validator that accepts anything (strict mode rejects unknown fields)."""
    deployment = by_kind(render("prod"), "Deployment")["ingest"]
    broken = {**deployment, "spec": {**deployment["spec"], "replicaz": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, latest_version(), strict=True)


def test_only_known_custom_resources_are_rendered() -> None:
    builtin = {"Namespace", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "Job"}
    builtin |= {"HorizontalPodAutoscaler", "NetworkPolicy"}
    for overlay in OVERLAYS:
        assert {d["kind"] for d in render(overlay)} <= builtin | CUSTOM_KINDS


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", SERVICES)
def test_deployment_has_probes_resources_and_a_locked_down_security_context(
    overlay: str, name: str
) -> None:
    docs = render(overlay)
    deployment = by_kind(docs, "Deployment")[name]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    (container,) = containers(deployment)
    assert container["args"] == [f"services.{name}"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    env = {e["name"]: e for e in container["env"]}
    if name == "scoring":
        data_dir = env["TIERFLOW_SCORING_DATA_DIR"]["value"]
        assert "emptyDir" in volumes[mounts[data_dir]]
    if name in CONFIG_FILES:
        variable, config_map, filename = CONFIG_FILES[name]
        mount_path, _, mounted_file = env[variable]["value"].rpartition("/")
        assert mounted_file == filename
        rendered_name = volumes[mounts[mount_path]]["configMap"]["name"]
        config = by_kind(docs, "ConfigMap")[rendered_name]
        assert rendered_name.startswith(config_map + "-")  # hash-suffixed: edits roll the pods
        assert filename in config["data"]
    # every Deployment has its Service and PodDisruptionBudget
    assert by_kind(docs, "Service")[name]["spec"]["selector"] == {"app.kubernetes.io/name": name}
    assert name in by_kind(docs, "PodDisruptionBudget")


def test_secrets_are_referenced_not_rendered_and_every_key_is_in_the_example() -> None:
    example = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())
    keys = set(example["stringData"])
    for overlay in OVERLAYS:
        docs = render(overlay)
        assert "Secret" not in {d["kind"] for d in docs}
        referenced: dict[str, str] = {}
        for doc in [*by_kind(docs, "Deployment").values(), *by_kind(docs, "Job").values()]:
            for container in containers(doc):
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] == example["metadata"]["name"]
                        referenced[env["name"]] = ref["key"]
        assert set(referenced.values()) <= keys
        assert {
            "TIERFLOW_ADMIN_TOKEN",
            "TIERFLOW_WEBHOOK_SECRET",
            "TIERFLOW_IDENTITY_SUPPRESSION_KEY",
            "TIERFLOW_DATABASE_URL",
        } <= set(referenced)


def test_the_secret_map_is_what_the_settings_classes_read() -> None:
    """SECRETS_READ is checked against the code, so the two tests using it cannot drift."""
    for name, settings in SETTINGS.items():
        assert settings_env_names(settings) & SECRET_ENV == SECRETS_READ[name], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_pod_gets_only_the_secrets_its_service_reads(overlay: str) -> None:
    docs = render(overlay)
    for workload in [*by_kind(docs, "Deployment").values(), *by_kind(docs, "Job").values()]:
        name = pod_labels(workload)["app.kubernetes.io/name"]
        for container in containers(workload):
            assert not any("secretRef" in source for source in container.get("envFrom", []))
            mounted = {
                env["name"]
                for env in container.get("env", [])
                if "secretKeyRef" in env.get("valueFrom", {})
            }
            assert mounted == SECRETS_READ[name], f"{overlay}: {name}"


def test_the_secret_example_makes_a_webhook_secret_automation_accepts() -> None:
    assert shutil.which("openssl"), "the example's command uses openssl, as operators would"
    example = (K8S / "base" / "secret.example.yaml").read_text()
    (command,) = re.findall(r'--from-literal=webhook-secret=("[^"]*")', example)
    made = subprocess.run(
        ["sh", "-c", f"printf %s {command}"], capture_output=True, text=True, check=True
    ).stdout
    AutomationSettings.model_validate({WEBHOOK_SECRET: made, "admin_token": "x"})


def test_config_maps_carry_the_services_default_files() -> None:
    sync = sync_module()
    for target, source in sync.CONFIG_COPIES.items():
        assert target.read_text() == source.read_text(), (
            f"{target.name} differs from {source.name}: run `python deploy/sync.py`"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migration_job_migrates_and_creates_topics(overlay: str) -> None:
    job = by_kind(render(overlay), "Job")["tierflow-migrate"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["tierflow db migrate && tierflow topics create"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_is_denied_by_default(overlay: str) -> None:
    policies = by_kind(render(overlay), "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {}
    assert deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scoring_pods_advertise_their_own_address_and_may_call_each_other(overlay: str) -> None:
    """Faust forwards an explain request to the pod owning the person, at the address that pod
    advertises: 0.0.0.0 (the bind address) would be every pod's, so none would forward."""
    docs = render(overlay)
    deployments = by_kind(docs, "Deployment")
    (container,) = containers(deployments["scoring"])
    env = {e["name"]: e for e in container["env"]}
    assert env["TIERFLOW_SCORING_HOST"]["value"] == "0.0.0.0"
    advertised = env["TIERFLOW_SCORING_ADVERTISED_HOST"]["valueFrom"]["fieldRef"]
    assert advertised["fieldPath"] == "status.podIP"
    policies = list(by_kind(docs, "NetworkPolicy").values())
    scoring, identity = pod_labels(deployments["scoring"]), pod_labels(deployments["identity"])
    assert admits(policies, to=scoring, source=scoring)
    assert admits(policies, to=scoring, source=identity)
    # guards the matcher: scoring has no business calling automation
    assert not admits(policies, to=pod_labels(deployments["automation"]), source=scoring)


def test_prod_scales_consumers_on_lag_up_to_the_partition_count_and_ingest_on_cpu() -> None:
    docs = render("prod")
    scaled = by_kind(docs, "ScaledObject")
    assert set(scaled) == set(CONSUMERS)
    partitions = prod_partitions()
    for name, (group, topic) in CONSUMERS.items():
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == group
        assert trigger["metadata"].get("topic") == topic
        assert trigger["metadata"]["allowIdleConsumers"] == "false"
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["ingest"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "ingest"
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    # the autoscalers own the replica counts: an applied `replicas` would fight them
    for name, deployment in by_kind(docs, "Deployment").items():
        assert "replicas" not in deployment["spec"], name
    for doc in docs:
        if doc["kind"] in {"ScaledObject", "HorizontalPodAutoscaler", "ServiceMonitor"}:
            assert doc["metadata"]["namespace"] == "tierflow"


def test_dev_runs_one_replica_of_everything_without_operators() -> None:
    docs = render("dev")
    assert {d["spec"]["replicas"] for d in by_kind(docs, "Deployment").values()} == {1}
    assert not CUSTOM_KINDS & {d["kind"] for d in docs}


def test_prod_service_monitor_scrapes_every_service_and_rule_is_the_alerts_file() -> None:
    docs = render("prod")
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    (selector,) = monitor["spec"]["selector"]["matchExpressions"]
    assert set(selector["values"]) == set(SERVICES)
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    (rule,) = by_kind(docs, "PrometheusRule").values()
    alerts = yaml.safe_load(sync_module().ALERTS.read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    assert rule["metadata"]["namespace"] == "tierflow"


def test_strimzi_topics_match_the_topic_registry() -> None:
    topics = by_kind(render("prod"), "KafkaTopic")
    replication = int(sync_module().prod_literals()["TIERFLOW_TOPIC_REPLICATION"])
    assert set(topics) == {spec.name for spec in ALL_TOPICS}
    for spec in ALL_TOPICS:
        topic = topics[spec.name]
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"]
        assert topic["spec"]["topicName"] == spec.name
        assert topic["spec"]["partitions"] == (spec.partitions or prod_partitions())
        assert topic["spec"]["replicas"] == replication
        config = topic["spec"]["config"]
        assert {k: config[k] for k in spec.configs} == spec.configs
        # the only config beyond the registry: what makes acks=all survive one broker loss
        assert set(config) - set(spec.configs) <= {"min.insync.replicas"}
        assert int(config["min.insync.replicas"]) == replication - 1


def test_derived_deploy_files_are_up_to_date() -> None:
    assert sync_module().stale() == [], "run `python deploy/sync.py`"
