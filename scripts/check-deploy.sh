#!/usr/bin/env bash
# Static checks of everything under deploy/ and of the Dockerfile; works offline once the tools are
# installed (only PyPI is needed, the first time).
#
#   scripts/check-deploy.sh                       # uses .venv/bin/python to create the tools' venv
#   PYTHON=/path/to/python scripts/check-deploy.sh
#
# Steps, each failing the script on any finding:
#   1. tools: requirements/deploy-check.txt (locked from deploy/requirements-check.in) is installed into a venv of its own ($DEPLOY_CHECK_VENV,
#      default build/deploy-check-venv, made with $PYTHON), again only when that file changes. Set
#      DEPLOY_CHECK_VENV=.venv to install into the project's venv instead (checkov pins many packages).
#   2. render: `kubectl kustomize` of deploy/base and of every overlay under deploy/overlays/.
#   3. schemas: `kubernetes-validate --strict` against Kubernetes $K8S_VERSIONS (default 1.33.0 and 1.36.0: an older supported release and the current one). It has
#      no schemas for custom resources and only warns about them, so: a "no schema" warning fails the
#      run for any kind except ServiceMonitor and PrometheusRule (monitoring.coreos.com/v1) and the
#      Messaging Topology Operator's Vhost, User, Permission and TopicPermission (rabbitmq.com/v1beta1)
#      (a typo in a core apiVersion would otherwise pass), and those are checked by step 4 instead.
#   4. custom resources and queries (Python below): ServiceMonitor and PrometheusRule against the fields
#      the Prometheus Operator accepts (unknown fields fail, as with --strict), every PromQL expression
#      of the rules and of deploy/grafana/*.json parsed with promql-parser, durations, severities,
#      and that the Service, PDB, NetworkPolicy and ServiceMonitor select the Deployment's pods;
#      Vhost, User, Permission and TopicPermission against the fields of the operator's v1beta1 types
#      (required ones present, unknown ones failing), permission regexes that compile, and every
#      Permission/TopicPermission naming a Vhost and a User of the same render, once per user and vhost
#      (per exchange for topic permissions). That they grant what the service needs is
#      tests/unit/test_deploy.py's job, that RabbitMQ enforces them tests/security's.
#      (That the metric names exist in the service is tests/unit/test_deploy.py's job.)
#   5. checkov: `--framework kubernetes` over the rendered manifests, `--framework dockerfile` over the
#      Dockerfile. No --skip-check list: each skipped check is an annotation `checkov.io/skipN` on the
#      object it concerns (deploy/base/deployment.yaml), with its reason, and is listed in the summary.
set -euo pipefail

started=$(date +%s)
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
DEPLOY_CHECK_VENV="${DEPLOY_CHECK_VENV:-build/deploy-check-venv}"
K8S_VERSIONS="${K8S_VERSIONS:-1.33.0 1.36.0}"
REQUIREMENTS=requirements/deploy-check.txt  # locked from deploy/requirements-check.in

fail() { echo "check-deploy: $*" >&2; exit 1; }

command -v kubectl >/dev/null || fail "kubectl not found (needed for 'kubectl kustomize'; any kubectl >= 1.27)"
[[ -x "$PYTHON" ]] || command -v "$PYTHON" >/dev/null || fail "PYTHON=$PYTHON is not an interpreter"

# 1. tools ------------------------------------------------------------------------------------------
tools_bin="$DEPLOY_CHECK_VENV/bin"
stamp="$DEPLOY_CHECK_VENV/.check-deploy-requirements.sha256"
wanted=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [[ ! -x "$tools_bin/checkov" || ! -x "$tools_bin/kubernetes-validate" \
      || "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]]; then
  echo "check-deploy: installing $REQUIREMENTS into $DEPLOY_CHECK_VENV (once)"
  [[ -x "$tools_bin/python" ]] || "$PYTHON" -m venv "$DEPLOY_CHECK_VENV"
  "$tools_bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes -r "$REQUIREMENTS"
  echo "$wanted" > "$stamp"
fi
TOOLS_PY="$tools_bin/python"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 2. render -----------------------------------------------------------------------------------------
shopt -s nullglob
targets=(deploy/base)
for overlay in deploy/overlays/*/; do
  targets+=("${overlay%/}")
done
rendered=()
for target in "${targets[@]}"; do
  out="$work/$(echo "$target" | tr '/' '_').yaml"
  kubectl kustomize "$target" > "$out" || fail "kubectl kustomize $target failed"
  rendered+=("$out")
done

# 3. schemas ----------------------------------------------------------------------------------------
validate_log="$work/validate.log"
validate_args=()
for version in $K8S_VERSIONS; do
  validate_args+=(-k "$version")
done
if ! "$tools_bin/kubernetes-validate" --strict --quiet "${validate_args[@]}" "${rendered[@]}" > "$validate_log" 2>&1; then
  cat "$validate_log" >&2
  fail "kubernetes-validate found invalid manifests"
fi
unknown=$(grep "Couldn't find schema" "$validate_log" \
  | grep -v -E "for kind (ServiceMonitor|PrometheusRule) with api version monitoring\.coreos\.com/v1 " \
  | grep -v -E "for kind (Vhost|User|Permission|TopicPermission) with api version rabbitmq\.com/v1beta1 " \
  || true)
if [[ -n "$unknown" ]]; then
  echo "$unknown" >&2
  fail "kinds without a schema (wrong apiVersion?)"
fi

# 4. custom resources, selectors and PromQL ---------------------------------------------------------
"$TOOLS_PY" - "${rendered[@]}" <<'PY'
import glob
import json
import re
import sys

import promql_parser
import yaml

DURATION = re.compile(r"^(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$")
META = {"apiVersion", "kind", "metadata", "spec"}
RULE_GROUP = {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset", "labels"}
RULE = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
SM_SPEC = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels",
           "sampleLimit", "targetLimit", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
           "attachMetadata", "scrapeProtocols", "keepDroppedTargets", "scrapeClass", "bodySizeLimit",
           "fallbackScrapeProtocol", "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor",
           "scrapeClassicHistograms", "convertClassicHistogramsToNHCB"}
SM_ENDPOINT = {"port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "tlsConfig",
               "bearerTokenSecret", "authorization", "honorLabels", "honorTimestamps", "trackTimestampsStaleness",
               "basicAuth", "oauth2", "metricRelabelings", "relabelings", "proxyUrl", "followRedirects",
               "enableHttp2", "filterRunning", "noProxy", "proxyFromEnvironment", "proxyConnectHeader"}
SEVERITIES = {"critical", "warning", "info"}
# The Messaging Topology Operator's rabbitmq.com/v1beta1 types (api/v1beta1/*_types.go): spec fields,
# and which of them are required.
TOPOLOGY_SPEC = {
    "Vhost": ({"name", "tracing", "tags", "defaultQueueType", "rabbitmqClusterReference"},
              {"name", "rabbitmqClusterReference"}),
    "User": ({"tags", "rabbitmqClusterReference", "importCredentialsSecret"}, {"rabbitmqClusterReference"}),
    "Permission": ({"user", "userReference", "vhost", "permissions", "rabbitmqClusterReference"},
                   {"vhost", "permissions", "rabbitmqClusterReference"}),
    "TopicPermission": ({"user", "userReference", "vhost", "permissions", "rabbitmqClusterReference"},
                        {"vhost", "permissions", "rabbitmqClusterReference"}),
}
TOPOLOGY_PERMISSIONS = {"Permission": {"configure", "write", "read"}, "TopicPermission": {"exchange", "write", "read"}}
CLUSTER_REFERENCE = {"name", "namespace", "connectionSecret"}
USER_TAGS = {"management", "policymaker", "monitoring", "administrator"}
errors: list[str] = []


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|[smhdwy])", duration))


def promql(where: str, expr: str) -> None:
    try:
        promql_parser.parse(expr)
    except ValueError as error:
        errors.append(f"{where}: PromQL does not parse: {error}: {expr!r}")


def unknown(where: str, found: dict, allowed: set) -> None:
    extra = set(found) - allowed
    if extra:
        errors.append(f"{where}: unknown fields {sorted(extra)}")


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_rule(where: str, obj: dict) -> None:
    unknown(where, obj, META)
    spec = obj.get("spec") or {}
    unknown(f"{where}.spec", spec, {"groups"})
    names = set()
    for g, group in enumerate(spec.get("groups") or []):
        gw = f"{where}.spec.groups[{g}]"
        unknown(gw, group, RULE_GROUP)
        if not group.get("name") or group["name"] in names:
            errors.append(f"{gw}: missing or repeated name")
        names.add(group.get("name"))
        if not group.get("rules"):
            errors.append(f"{gw}: no rules")
        for r, rule in enumerate(group.get("rules") or []):
            rw = f"{gw}.rules[{r}] ({rule.get('alert') or rule.get('record')})"
            unknown(rw, rule, RULE)
            if ("alert" in rule) == ("record" in rule):
                errors.append(f"{rw}: needs exactly one of alert and record")
            if not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
                errors.append(f"{rw}: expr must be a non-empty string")
            else:
                promql(rw, rule["expr"])
            for key in ("for", "keep_firing_for"):
                if key in rule and not DURATION.match(str(rule[key])):
                    errors.append(f"{rw}: {key} is not a duration: {rule[key]!r}")
            for key in ("labels", "annotations"):
                if not all(isinstance(k, str) and isinstance(v, str) for k, v in (rule.get(key) or {}).items()):
                    errors.append(f"{rw}: {key} must map strings to strings")
            if "alert" in rule:
                if (rule.get("labels") or {}).get("severity") not in SEVERITIES:
                    errors.append(f"{rw}: labels.severity must be one of {sorted(SEVERITIES)}")
                if not {"summary", "description"} <= set(rule.get("annotations") or {}):
                    errors.append(f"{rw}: annotations need summary and description")
    if not names:
        errors.append(f"{where}: no rule groups")


def check_topology(path: str, by_kind: dict[str, list[dict]]) -> None:
    """Messaging Topology Operator objects: fields, regexes, and what they refer to."""
    vhosts = {(d.get("spec") or {}).get("name") for d in by_kind.get("Vhost", [])}
    users = {d["metadata"]["name"] for d in by_kind.get("User", [])}
    clusters = set()
    granted: dict[tuple, str] = {}
    for kind, (fields, required) in TOPOLOGY_SPEC.items():
        for obj in by_kind.get(kind, []):
            where = f"{path}: {kind} {obj['metadata']['name']}"
            if obj.get("apiVersion") != "rabbitmq.com/v1beta1":
                errors.append(f"{where}: apiVersion must be rabbitmq.com/v1beta1")
            unknown(where, obj, META)
            spec = obj.get("spec") or {}
            unknown(f"{where}.spec", spec, fields)
            for key in sorted(required - set(spec)):
                errors.append(f"{where}.spec: {key} is required")
            reference = spec.get("rabbitmqClusterReference") or {}
            unknown(f"{where}.spec.rabbitmqClusterReference", reference, CLUSTER_REFERENCE)
            if ("name" in reference) == ("connectionSecret" in reference):
                errors.append(f"{where}: rabbitmqClusterReference needs exactly one of name and connectionSecret")
            clusters.add(json.dumps(reference, sort_keys=True))
            if kind == "User":
                if not set(spec.get("tags") or []) <= USER_TAGS:
                    errors.append(f"{where}: tags must be among {sorted(USER_TAGS)}")
                secret = spec.get("importCredentialsSecret")
                if secret is not None and set(secret) != {"name"}:
                    errors.append(f"{where}: importCredentialsSecret takes only a name")
            if kind in TOPOLOGY_PERMISSIONS:
                permissions = spec.get("permissions") or {}
                unknown(f"{where}.spec.permissions", permissions, TOPOLOGY_PERMISSIONS[kind])
                for key in TOPOLOGY_PERMISSIONS[kind] - {"exchange"}:
                    # The operator leaves an omitted one empty, which RabbitMQ reads as "^$": say so.
                    if not isinstance(permissions.get(key), str) or not permissions[key]:
                        errors.append(f"{where}: permissions.{key} must be a regex (\"^$\" for nothing)")
                        continue
                    try:
                        re.compile(permissions[key])
                    except re.error as error:
                        errors.append(f"{where}: permissions.{key} does not compile: {error}")
                if kind == "TopicPermission" and not permissions.get("exchange"):
                    errors.append(f"{where}: permissions.exchange names the topic exchange it applies to")
                if ("user" in spec) == ("userReference" in spec):
                    errors.append(f"{where}: needs exactly one of user and userReference")
                user = spec.get("user") or (spec.get("userReference") or {}).get("name")
                if user not in users:
                    errors.append(f"{where}: user {user!r} is not a User of this render")
                if spec.get("vhost") not in vhosts:
                    errors.append(f"{where}: vhost {spec.get('vhost')!r} is not a Vhost of this render")
                key = (kind, user, spec.get("vhost"), permissions.get("exchange"))
                if key in granted:
                    errors.append(f"{where}: grants again what {granted[key]} grants")
                granted[key] = obj["metadata"]["name"]
    if len(clusters) > 1:
        errors.append(f"{path}: the RabbitMQ topology objects refer to different clusters")


def check_file(path: str) -> None:
    docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    pods = [d["spec"]["template"]["metadata"].get("labels", {}) for d in by_kind.get("Deployment", [])]
    if not pods:
        errors.append(f"{path}: no Deployment")

    def selects_pods(where: str, selector: dict) -> None:
        if not any(matches(selector, labels) for labels in pods):
            errors.append(f"{where}: selector {selector} selects no pod of the Deployment")

    for svc in by_kind.get("Service", []):
        selects_pods(f"{path}: Service {svc['metadata']['name']}", svc["spec"].get("selector") or {})
    for pdb in by_kind.get("PodDisruptionBudget", []):
        selects_pods(f"{path}: PDB", pdb["spec"]["selector"].get("matchLabels") or {})
    for policy in by_kind.get("NetworkPolicy", []):
        selects_pods(f"{path}: NetworkPolicy", policy["spec"]["podSelector"].get("matchLabels") or {})
    for sm in by_kind.get("ServiceMonitor", []):
        where = f"{path}: ServiceMonitor {sm['metadata']['name']}"
        unknown(where, sm, META)
        spec = sm.get("spec") or {}
        unknown(f"{where}.spec", spec, SM_SPEC)
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        services = [s for s in by_kind.get("Service", []) if matches(selector, s["metadata"].get("labels", {}))]
        if not services:
            errors.append(f"{where}: selector {selector} matches no Service")
        if not spec.get("endpoints"):
            errors.append(f"{where}: no endpoints")
        for e, endpoint in enumerate(spec.get("endpoints") or []):
            ew = f"{where}.endpoints[{e}]"
            unknown(ew, endpoint, SM_ENDPOINT)
            ports = {p.get("name") for s in services for p in s["spec"]["ports"]}
            if endpoint.get("port") not in ports:
                errors.append(f"{ew}: port {endpoint.get('port')!r} is not a named port of {sorted(ports)}")
            for key in ("interval", "scrapeTimeout"):
                if key in endpoint and not DURATION.match(endpoint[key]):
                    errors.append(f"{ew}: {key} is not a duration")
            if seconds(endpoint.get("scrapeTimeout", "10s")) > seconds(endpoint.get("interval", "30s")):
                errors.append(f"{ew}: scrapeTimeout exceeds interval")
    rules = by_kind.get("PrometheusRule", [])
    if not rules:
        errors.append(f"{path}: no PrometheusRule")
    for rule in rules:
        check_rule(f"{path}: PrometheusRule {rule['metadata']['name']}", rule)
    check_topology(path, by_kind)


for rendered in sys.argv[1:]:
    check_file(rendered)

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
dashboards = sorted(glob.glob("deploy/grafana/*.json"))
queries = 0
for path in dashboards:
    dashboard = json.load(open(path, encoding="utf-8"))
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            if panel.get("datasource", {}).get("uid") != "${datasource}":
                errors.append(f"{path}: panel {panel.get('title')!r} does not use ${{datasource}}")
            expr = target.get("expr", "")
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            expr = re.sub(r"\$\{?[a-z_]+\}?", "x", expr)
            promql(f"{path}: panel {panel.get('title')!r}", expr)
            queries += 1

for error in errors:
    print(f"  {error}", file=sys.stderr)
if errors:
    sys.exit("check-deploy: custom resource / selector / PromQL checks failed")
print(f"check-deploy: ServiceMonitor, PrometheusRule, RabbitMQ topology objects, selectors and {queries} "
      "dashboard queries: ok")
PY

# 5. checkov ----------------------------------------------------------------------------------------
checkov_args=(--skip-download --compact --output json)
checkov_rc=0
"$tools_bin/checkov" --framework kubernetes "${rendered[@]/#/--file=}" "${checkov_args[@]}" \
  > "$work/checkov-kubernetes.json" || checkov_rc=$?
"$tools_bin/checkov" --framework dockerfile --file Dockerfile "${checkov_args[@]}" \
  > "$work/checkov-dockerfile.json" || checkov_rc=$((checkov_rc | $?))

summary_rc=0
"$TOOLS_PY" - "$work/checkov-kubernetes.json" "$work/checkov-dockerfile.json" <<'PY' || summary_rc=$?
import json
import sys

failed = 0
for path in sys.argv[1:]:
    text = open(path, encoding="utf-8").read()
    if not text.strip():
        sys.exit(f"check-deploy: checkov wrote no report ({path})")
    reports = json.loads(text)
    for report in reports if isinstance(reports, list) else [reports]:
        if "summary" not in report:  # e.g. {"passed": 0, "failed": 0, ...} when nothing was scanned
            sys.exit(f"check-deploy: checkov scanned nothing ({path})")
        s = report["summary"]
        failed += s["failed"] + s["parsing_errors"]
        print(f"checkov {report['check_type']}: {s['passed']} passed, {s['failed']} failed, "
              f"{s['skipped']} skipped, {s['parsing_errors']} parsing errors")
        for check in report["results"]["failed_checks"]:
            print(f"  FAILED {check['check_id']} {check['check_name']} - {check['resource']} ({check['file_path']})")
        skips = {}
        for check in report["results"]["skipped_checks"]:
            skips.setdefault((check["check_id"], check["check_result"].get("suppress_comment", "")), set()).add(
                check["resource"])
        for (check_id, reason), resources in sorted(skips.items()):
            print(f"  skipped {check_id} on {', '.join(sorted(resources))}: {reason}")
            if not reason.strip():
                print("  FAILED: a skipped check without a reason")
                failed += 1
sys.exit(1 if failed else 0)
PY
[[ $checkov_rc -eq 0 && $summary_rc -eq 0 ]] || fail "checkov found problems"

echo "check-deploy: rendered ${targets[*]}; kubernetes-validate --strict ($K8S_VERSIONS), custom resources,"
echo "check-deploy: PromQL and checkov all passed in $(( $(date +%s) - started )) s"
