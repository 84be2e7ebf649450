"""The deployment files agree with the service they deploy.

- every metric the Grafana dashboard and the alert rules query is one the service exports, with labels
  it has;
- the ConfigMap and the container's environment name only real settings (or their ``_FILE`` variants),
  and secrets only ever as files;
- the pod's grace period outlasts the service's own shutdown drain.

The manifests are rendered with ``kubectl kustomize`` (tests skip without kubectl) and turned into JSON
by ``kubectl label --local -o json``, which needs no cluster, so no YAML parser is needed here.
The schema, checkov and PromQL checks are scripts/check-deploy.sh's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from livekit_signaling.app.settings import Settings, load_settings
from livekit_signaling.telemetry.metrics import Metrics
from testkit.processes import setting_default

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "livekit-signaling.json"
TARGETS = ["deploy/base", "deploy/overlays/example", "deploy/overlays/redis-cluster"]
SECRET_NAME = "livekit-signaling"
SECRET_DIR = "/var/run/secrets/livekit-signaling/"
SECRET_KEYS = {"livekit-api-key", "livekit-api-secret", "amqp-url", "redis-url", "redis-password"}

METRIC = re.compile(r"livekit_signaling_[a-z_]+")
SELECTOR = re.compile(r"(livekit_signaling_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels every series gets from the scrape (ServiceMonitor target labels), and `le` of histogram buckets.
SCRAPE_LABELS = {"namespace", "pod", "job", "instance", "service", "endpoint", "container", "le"}


# --- what the service exports ---------------------------------------------------------------------


@cache
def exported_series() -> dict[str, set[str]]:
    """Every series name a query may use, with the label names it carries.

    prometheus_client strips ``_total`` from counter family names; the series is ``<family>_total``.
    A histogram family is queried as ``<family>_bucket``, ``_sum`` or ``_count``, never bare.
    """
    metrics = Metrics()
    # Label names are not in the collected families until a child exists, so take them from the
    # metric objects themselves (``_labelnames`` is prometheus_client's attribute for them).
    labels = {
        wrapper._name: set(wrapper._labelnames)
        for wrapper in vars(metrics).values()
        if isinstance(wrapper, MetricWrapperBase)
    }
    series: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        family_labels = labels[family.name]
        if family.type == "counter":
            series[f"{family.name}_total"] = family_labels
        elif family.type == "histogram":
            for suffix in HISTOGRAM_SUFFIXES:
                series[f"{family.name}{suffix}"] = family_labels | {"le"}
        else:
            series[family.name] = family_labels
    return series


def test_exported_series_cover_the_documented_metrics() -> None:
    series = exported_series()
    for name in (
        "livekit_signaling_commands_total",
        "livekit_signaling_command_duration_seconds_bucket",
        "livekit_signaling_partitions_active",
        "livekit_signaling_partitions",
    ):
        assert name in series
    assert series["livekit_signaling_commands_total"] == {"action", "outcome"}


def unknown_metrics(expr: str) -> list[str]:
    """Metric names in ``expr`` that the service does not export (histogram suffixes stripped first)."""
    series = exported_series()
    problems = []
    for name in METRIC.findall(expr):
        if name in series:
            continue
        stripped = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
        problems.append(name if stripped == name else f"{name} (histogram {stripped}?)")
    return problems


def unknown_labels(expr: str) -> list[str]:
    """Label names matched or grouped on in ``expr`` that none of its metrics (nor the scrape) has."""
    series = exported_series()
    problems = []
    for name, matchers in SELECTOR.findall(expr):
        for label in MATCHER.findall(matchers):
            if label not in series.get(name, set()) | SCRAPE_LABELS:
                problems.append(f"{name}{{{label}}}")
    known = set(SCRAPE_LABELS)
    for name in METRIC.findall(expr):
        known |= series.get(name, set())
    for grouping in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            if label not in known:
                problems.append(f"by/without ({label})")
    return problems


def test_the_metric_checks_catch_mistakes() -> None:
    assert unknown_metrics("rate(livekit_signaling_commands[5m])") == ["livekit_signaling_commands"]
    assert unknown_metrics("livekit_signaling_command_duration_seconds") != []
    assert unknown_metrics("livekit_signaling_command_duration_seconds_count") == []
    assert unknown_metrics("livekit_signaling_ready_bucket") == [
        "livekit_signaling_ready_bucket (histogram livekit_signaling_ready?)"
    ]
    assert unknown_labels('livekit_signaling_commands_total{outcom="ok"}') == [
        "livekit_signaling_commands_total{outcom}"
    ]
    assert unknown_labels("sum by (reason) (livekit_signaling_commands_total)") == ["by/without (reason)"]
    assert unknown_labels('sum by (namespace, le) (livekit_signaling_ready{pod=~"a"})') == []


# --- the Grafana dashboard ------------------------------------------------------------------------


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append((panel["title"], target["expr"]))
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            queries.append((f"variable {variable['name']}", query["query"]))
    return queries


def test_dashboard_queries_use_exported_metrics_and_labels() -> None:
    queries = dashboard_queries()
    assert len(queries) > 20
    problems = [
        f"{title}: {problem}"
        for title, expr in queries
        for problem in unknown_metrics(expr) + unknown_labels(expr)
    ]
    assert problems == []


def test_dashboard_covers_every_exported_metric() -> None:
    referenced = {name for _, expr in dashboard_queries() for name in METRIC.findall(expr)}
    families = {
        next((n.removesuffix(s) for s in HISTOGRAM_SUFFIXES if n.endswith(s)), n) for n in exported_series()
    }
    shown = {next((n.removesuffix(s) for s in HISTOGRAM_SUFFIXES if n.endswith(s)), n) for n in referenced}
    assert families - shown == set()


def test_dashboard_uses_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


# --- the rendered manifests -----------------------------------------------------------------------


@cache
def rendered(target: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (needed for `kubectl kustomize`)")
    env = {**os.environ, "KUBECONFIG": os.devnull}  # no cluster is contacted; make sure of it
    manifests = subprocess.run(
        [kubectl, "kustomize", str(ROOT / target)], check=True, capture_output=True, text=True, env=env
    ).stdout
    # `label --local` only rewrites the objects it is given; removing a label nobody has leaves them as
    # they are, and `-o json` prints them as JSON documents one after another.
    converted = subprocess.run(
        [kubectl, "label", "--local", "-f", "-", "-o", "json", "check-deploy.invalid/unused-"],
        input=manifests,
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    decoder = json.JSONDecoder()
    objects: list[dict[str, Any]] = []
    position = 0
    while position < len(converted):
        if converted[position].isspace():
            position += 1
            continue
        obj, position = decoder.raw_decode(converted, position)
        objects.extend(obj["items"] if obj.get("kind") == "List" else [obj])
    return tuple(objects)


def one(target: str, kind: str) -> dict[str, Any]:
    found = [obj for obj in rendered(target) if obj["kind"] == kind]
    assert len(found) == 1, f"{target}: expected one {kind}, found {len(found)}"
    return found[0]


def container(target: str) -> dict[str, Any]:
    containers = one(target, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def settings_env_names() -> dict[str, dataclasses.Field[Any]]:
    return {item.metadata["env"]: item for item in dataclasses.fields(Settings)}


@pytest.mark.parametrize("target", TARGETS)
def test_alert_rules_use_exported_metrics_and_labels(target: str) -> None:
    rule = one(target, "PrometheusRule")
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert {
        "LiveKitSignalingLiveKitUnavailable",
        "LiveKitSignalingDeadLetters",
        "LiveKitSignalingPartitionWithoutConsumer",
        "LiveKitSignalingNotReady",
        "LiveKitSignalingAbsent",
        "LiveKitSignalingHighLatency",
        "LiveKitSignalingAmqpDisconnected",
    } <= alerts
    problems = []
    for r in rules:
        assert METRIC.search(r["expr"]), f"{r['alert']} queries no livekit_signaling_ metric"
        problems += [f"{r['alert']}: {p}" for p in unknown_metrics(r["expr"]) + unknown_labels(r["expr"])]
    assert problems == []


@pytest.mark.parametrize("target", TARGETS)
def test_grace_period_outlasts_the_shutdown_drain(target: str) -> None:
    grace = one(target, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    configured = one(target, "ConfigMap")["data"].get("SHUTDOWN_GRACE_SECONDS")
    drain = float(configured) if configured is not None else setting_default("shutdown_grace_seconds")
    assert grace > setting_default("shutdown_grace_seconds")
    assert grace >= drain + 5, "leave the process a few seconds after the drain to close its connections"


@pytest.mark.parametrize("target", TARGETS)
def test_environment_names_only_real_settings(target: str) -> None:
    settings = settings_env_names()
    valid = set(settings) | {f"{name}_FILE" for name in settings}
    config = one(target, "ConfigMap")["data"]
    env = {item["name"]: item for item in container(target).get("env", [])}
    assert set(config) - valid == set()
    assert set(env) - valid == set()
    # Secrets never as plain values: only their _FILE variant, pointing into the mounted Secret.
    secrets = {name for name, item in settings.items() if item.metadata["secret"]}
    assert secrets & (set(config) | set(env)) == set()
    # Every required setting is given one way or the other.
    given = set(config) | {name.removesuffix("_FILE") for name in env}
    required = {name for name, item in settings.items() if item.metadata["required"]}
    assert required - given == set()
    for value in config.values():
        assert value.strip() == value


@pytest.mark.parametrize("target", TARGETS)
def test_settings_load_as_rendered(target: str, tmp_path: Path) -> None:
    """The ConfigMap and the container's environment, with dummy files for the Secret's keys, are
    settings the service accepts (e.g. Redis configured one way, not both), and they use Redis."""
    environ = dict(one(target, "ConfigMap")["data"])
    for item in container(target)["env"]:
        value = item["value"]
        if value.startswith(SECRET_DIR):
            value = str(tmp_path / value.removeprefix(SECRET_DIR))
            scheme = {"amqp-url": "amqp://u:p@rabbit/", "redis-url": "redis://:p@redis:6379/0"}
            Path(value).write_text(scheme.get(Path(value).name, "dummy") + "\n")
        environ[item["name"]] = value
    settings = load_settings(environ)
    assert settings.uses_redis


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_are_read_from_the_mounted_secret(target: str) -> None:
    pod = one(target, "Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"].rstrip("/") + "/": mount for mount in container(target)["volumeMounts"]}
    mount = mounts[SECRET_DIR]
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["secret"]["secretName"] == SECRET_NAME
    files = {
        item["name"]: item["value"] for item in container(target)["env"] if item["name"].endswith("_FILE")
    }
    # A URL; or with Sentinel the nodes' and the Sentinels' passwords; or with a cluster the nodes'.
    redis = {name for name in files if name.startswith("REDIS_")}
    assert redis in (
        {"REDIS_URL_FILE"},
        {"REDIS_PASSWORD_FILE", "REDIS_SENTINEL_PASSWORD_FILE"},
        {"REDIS_PASSWORD_FILE"},
    )
    assert set(files) == {"LIVEKIT_API_KEY_FILE", "LIVEKIT_API_SECRET_FILE", "AMQP_URL_FILE", *redis}
    for path in files.values():
        assert path.startswith(SECRET_DIR)
        assert path.removeprefix(SECRET_DIR) in SECRET_KEYS
    assert not any(obj["kind"] == "Secret" for obj in rendered(target)), "no Secret values in the repository"


@pytest.mark.parametrize("target", TARGETS)
def test_ports_and_probes_match_the_service(target: str) -> None:
    port = int(one(target, "ConfigMap")["data"].get("SIGNALING_HTTP_PORT", setting_default("http_port")))
    main = container(target)
    assert main["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert main["args"] == ["run"]
    service = one(target, "Service")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http", port, "http")
    ]
    endpoints = one(target, "ServiceMonitor")["spec"]["endpoints"]
    assert [(e["port"], e["path"]) for e in endpoints] == [("http", "/metrics")]
    ingress = one(target, "NetworkPolicy")["spec"]["ingress"]
    assert [p["port"] for rule in ingress for p in rule["ports"]] == [port]
