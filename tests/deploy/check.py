#!/usr/bin/env python3
"""Offline checks of inferd's deployment artefacts (examples/, the Dockerfiles), run by
.ci/check-deploy inside its virtual environment (tests/deploy/requirements.txt).

    python tests/deploy/check.py [--write-prometheus-rule]

Each check prints one line; the last line counts them ("N passed, N failed"). Then the self-test
makes broken copies of the artefacts in a temporary folder (a misspelled field, an unknown
metric name, ...) and requires the same checks to fail on each, so that they cannot pass
vacuously. With INFERD_METRICS_URLS set (space-separated base URLs of running inferd servers
that have served traffic), every metric name the dashboard, the alert rules, the adapter rules
and the KEDA trigger use must be exported by at least one of them.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.request

import jsonschema
import kubernetes_validate
import promql_parser
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Kubernetes versions the built-in resources are validated against: the oldest we document
# (preStop sleep, unhealthyPodEvictionPolicy and the rest are in it) and the newest the
# validator knows.
K8S_VERSIONS = ["1.31.0", kubernetes_validate.utils.latest_version()]

# CRD-based kinds and their vendored schemas (tests/deploy/schemas/README.md).
CRD_SCHEMAS = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "serving.kserve.io_clusterservingruntime_v1alpha1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "serving.kserve.io_inferenceservice_v1beta1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobject_v1alpha1.json",
    ("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass"): "secrets-store.csi.x-k8s.io_secretproviderclass_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrule_v1.json",
}

# Files in examples/kubernetes that are not Kubernetes objects.
NOT_MANIFESTS = {"prometheus-adapter-rules.yaml"}

# The Azure Key Vault provider's SecretProviderClass parameters and object fields
# (Azure/secrets-store-csi-driver-provider-azure, pkg/provider/types/types.go at d5f7cf5, 2026-06-11).
AZURE_SPC_PARAMETERS = {
    "keyvaultName", "cloudName", "usePodIdentity", "useVMManagedIdentity", "userAssignedIdentityID",
    "tenantId", "tenantID", "cloudEnvFileName", "clientID", "useAzureTokenProxy", "objects",
}
AZURE_SPC_OBJECT_FIELDS = {
    "objectName", "objectAlias", "objectVersion", "objectVersionHistory", "objectType", "objectFormat",
    "objectEncoding", "filePermission",
}
# KEDA's Prometheus scaler metadata (kedacore/keda, pkg/scalers/prometheus_scaler.go at 8b4f083, 2026-08-20).
KEDA_PROMETHEUS_METADATA = {
    "serverAddress", "query", "queryParameters", "threshold", "activationThreshold", "namespace",
    "customHeaders", "ignoreNullValues", "unsafeSsl", "awsRegion", "timeout", "identityOwner",
}
# The prometheus crate's process collector (Linux).
PROCESS_METRICS = {
    "process_cpu_seconds_total", "process_open_fds", "process_max_fds", "process_virtual_memory_bytes",
    "process_resident_memory_bytes", "process_start_time_seconds", "process_threads",
}
# Fields of a [[keys]] table (crates/inferd-server/src/auth/keys.rs and quota.rs).
KEY_FIELDS = {"id", "sha256", "models", "requests_per_minute", "tokens_per_minute"}
MODEL_KINDS = {"linear", "xgboost", "lightgbm", "embedding", "llm"}
# Labels Prometheus or Kubernetes service discovery add to every scraped series.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "container", "service", "endpoint_name", "__name__"}

# The Prometheus adapter's configuration, as its UnmarshalStrict reads it
# (kubernetes-sigs/prometheus-adapter, pkg/config/config.go at 01919d0, v0.12.0).
_RESOURCES = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "template": {"type": "string"},
        "namespaced": {"type": "boolean"},
        "overrides": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": False, "required": ["resource"],
            "properties": {"group": {"type": "string"}, "resource": {"type": "string"}}}},
    },
}
_RULE = {
    "type": "object", "additionalProperties": False, "required": ["seriesQuery"],
    "properties": {
        "seriesQuery": {"type": "string"},
        "seriesFilters": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                      "properties": {"is": {"type": "string"}, "isNot": {"type": "string"}}}},
        "resources": _RESOURCES,
        "name": {"type": "object", "additionalProperties": False,
                 "properties": {"matches": {"type": "string"}, "as": {"type": "string"}}},
        "metricsQuery": {"type": "string"},
    },
}
ADAPTER_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "properties": {"rules": {"type": "array", "items": _RULE}, "externalRules": {"type": "array", "items": _RULE},
                   "resourceRules": {"type": "object"}},
}


# ---------------------------------------------------------------------------------------------
# helpers


def load_yaml_docs(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def duration_seconds(text):
    """inferd's durations as the examples write them: 500ms, 10s, 2m, 1h."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(text).strip())
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def parse_promql(expr, grafana=False, adapter=False):
    """Parses `expr` with the Prometheus parser's rules; returns the AST or raises ValueError.
    Grafana's variables and the adapter's templates are substituted first, as those tools do
    before sending the query."""
    text = expr
    if grafana:
        text = text.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
        text = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".+", text)
    if adapter:
        text = (text.replace("<<.Series>>", "inferd_model_busy_ratio")
                .replace("<<.LabelMatchers>>", 'namespace="inferd",pod=~"a|b"')
                .replace("<<.GroupBy>>", "pod"))
    return promql_parser.parse(text)


def selectors(expr_ast):
    """(metric name, [(label, op, value)]) of every vector selector in the expression."""
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            matchers = [(m.name, str(m.op), m.value) for m in node.matchers.matchers]
            name = node.name
            if name is None:
                name = next((value for label, op, value in matchers if label == "__name__" and op.endswith("Equal")), None)
            found.append((name, matchers))

    promql_parser.walk(expr_ast, pre_visit=visit)
    return found


def family(name, histograms):
    """The metric family a sample name belongs to (`_bucket`, `_sum`, `_count` of histograms)."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name


def declared_metrics(root):
    """Metric names inferd's source declares: the string literals of crates/inferd-core/src/metrics,
    with which of them are histograms and which only exist with NVML (gpu.rs)."""
    names, histograms, gpu = set(), set(), set()
    for path in sorted((root / "crates/inferd-core/src/metrics").glob("*.rs")):
        text = path.read_text()
        for match in re.finditer(r'"(inferd_[a-z0-9_]+)"', text):
            names.add(match.group(1))
            if path.name == "gpu.rs":
                gpu.add(match.group(1))
        for match in re.finditer(r'histogram\(\s*"(inferd_[a-z0-9_]+)"', text):
            histograms.add(match.group(1))
    return names | PROCESS_METRICS, histograms, gpu


def env_names_read(root):
    """INFERD_* variables the source reads (clap's env = "...", std::env::var("...") and the like)."""
    names = set()
    for path in list((root / "src").rglob("*.rs")) + list((root / "crates").glob("*/src/**/*.rs")):
        names.update(re.findall(r'"(INFERD_[A-Z0-9_]+)"', path.read_text()))
    return names


def check_model_specs(value, where):
    """`[KIND=]PATH[,name=NAME][,kind=K][,device=D][,engine=E][,precision=P]`, several separated
    by ';' (src/model_spec.rs)."""
    errors = []
    for spec in value.split(";"):
        parts = spec.split(",")
        first = parts[0]
        if "=" in first and first.split("=", 1)[0] not in MODEL_KINDS | {"path"}:
            errors.append(f"{where}: model spec {spec!r}: kind must be one of {sorted(MODEL_KINDS)}")
        if not first.split("=", 1)[-1]:
            errors.append(f"{where}: model spec {spec!r}: no path")
        for option in parts[1:]:
            key, _, val = option.partition("=")
            if key not in {"name", "kind", "device", "engine", "precision"} or not val:
                errors.append(f"{where}: model spec {spec!r}: unknown option {option!r}")
            if key == "device" and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", val):
                errors.append(f"{where}: model spec {spec!r}: device {val!r}")
    return errors


# ---------------------------------------------------------------------------------------------
# checks: each takes the root of a tree laid out like the repository and returns its errors


def check_dockerfiles(root):
    errors = []
    # The virtual environment's bin folder first: the script may run without activating it.
    hadolint = shutil.which("hadolint", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    if hadolint is None:
        return ["hadolint is not installed (tests/deploy/requirements.txt)"]
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        result = subprocess.run([hadolint, "--config", str(root / ".hadolint.yaml"), "--no-color", str(root / name)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            errors.append(f"{name}: hadolint:\n{result.stdout}{result.stderr}".rstrip())
    return errors


def kubernetes_documents(root):
    paths = sorted((root / "examples/kubernetes").glob("*.yaml")) + sorted((root / "examples/kserve").glob("*.yaml"))
    paths += [p for p in [root / "examples/grafana/prometheus-rule.yaml"] if p.exists()]
    for path in paths:
        if path.name in NOT_MANIFESTS:
            continue
        for doc in load_yaml_docs(path):
            yield path, doc


def check_kubernetes_schemas(root):
    """Every built-in object strictly against Kubernetes' schemas, every CRD object strictly
    against the vendored CRD schema (and its metadata as ObjectMeta)."""
    errors = []
    schemas = root / "tests/deploy/schemas"
    for path, doc in kubernetes_documents(root):
        name = f"{path.relative_to(root)}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in CRD_SCHEMAS:
            schema = json.loads((schemas / CRD_SCHEMAS[key]).read_text())
            validator = jsonschema.Draft7Validator(schema)
            for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
                location = ".".join(str(p) for p in error.absolute_path) or "(root)"
                errors.append(f"{name}: {location}: {error.message}")
            wrapper = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})}
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(wrapper, version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    errors.append(f"{name}: metadata (Kubernetes {version}): {error.message}")
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(f"{name}: no schema for {key} (neither Kubernetes {version} nor a vendored CRD)")
                break
            except kubernetes_validate.ValidationError as error:
                location = ".".join(str(p) for p in error.path) or "(root)"
                errors.append(f"{name}: Kubernetes {version}: {location}: {error.message}")
    return errors


def pod_specs(doc):
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        yield doc["spec"]["template"]["spec"]


def check_kubernetes_semantics(root):
    """What the schemas cannot see: inferd's own settings in the manifests, the Azure provider's
    and KEDA's string maps, the keys file inside the Secret, and how the files refer to each
    other."""
    errors = []
    known_env = env_names_read(root)
    adapter = yaml.safe_load((root / "examples/kubernetes/prometheus-adapter-rules.yaml").read_text())
    adapter_names = {rule.get("name", {}).get("as") or rule["seriesQuery"].split("{")[0] for rule in adapter.get("rules", [])}
    runtime_formats = {}
    for path, doc in kubernetes_documents(root):
        name = f"{path.relative_to(root)}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        kind = doc.get("kind")
        for spec in pod_specs(doc):
            for container in spec.get("containers", []):
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                for var in env:
                    if var.startswith("INFERD_") and var not in known_env:
                        errors.append(f"{name}: env {var} is not read by inferd")
                if "INFERD_MODELS" in env:
                    errors += check_model_specs(env["INFERD_MODELS"], name)
                delay = duration_seconds(env.get("INFERD_DRAIN_DELAY", "0s"))
                timeout = duration_seconds(env.get("INFERD_DRAIN_TIMEOUT", "30s"))
                pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                grace = spec.get("terminationGracePeriodSeconds", 30)
                if grace <= pre_stop + delay + timeout:
                    errors.append(f"{name}: terminationGracePeriodSeconds {grace} must exceed preStop sleep "
                                  f"{pre_stop}s + INFERD_DRAIN_DELAY {delay:g}s + INFERD_DRAIN_TIMEOUT {timeout:g}s")
                probes = {"livenessProbe": "/v2/health/live", "readinessProbe": "/v2/health/ready",
                          "startupProbe": "/v2/health/ready"}
                for probe, wanted in probes.items():
                    got = container.get(probe, {}).get("httpGet")
                    if got is None:
                        if probe != "startupProbe":
                            errors.append(f"{name}: no {probe}")
                        continue
                    if got.get("path") != wanted or got.get("port") not in ("http", 8080):
                        errors.append(f"{name}: {probe} must GET {wanted} on port 8080, not {got}")
                keys_file = env.get("INFERD_KEYS_FILE")
                if keys_file and not any(keys_file.startswith(m["mountPath"].rstrip("/") + "/")
                                         for m in container.get("volumeMounts", [])):
                    errors.append(f"{name}: INFERD_KEYS_FILE {keys_file} is on no volume mount")
                if not keys_file and env.get("INFERD_ALLOW_UNAUTHENTICATED") != "true":
                    errors.append(f"{name}: neither INFERD_KEYS_FILE nor INFERD_ALLOW_UNAUTHENTICATED=true: "
                                  "inferd refuses to start on 0.0.0.0 without credentials")
        if kind == "SecretProviderClass" and doc["spec"].get("provider") == "azure":
            params = doc["spec"].get("parameters", {})
            for key in params:
                if key not in AZURE_SPC_PARAMETERS:
                    errors.append(f"{name}: parameters.{key} is not a parameter of the Azure provider")
            objects = yaml.safe_load(params.get("objects", "")) or {}
            for item in objects.get("array", []):
                obj = yaml.safe_load(item)
                for key in obj:
                    if key not in AZURE_SPC_OBJECT_FIELDS:
                        errors.append(f"{name}: objects: {key} is not a field of a Key Vault object")
                if obj.get("objectType") not in ("secret", "key", "cert"):
                    errors.append(f"{name}: objects: objectType must be secret, key or cert")
                if obj.get("objectAlias", obj.get("objectName")) != "keys.toml":
                    errors.append(f"{name}: objects: the file must be keys.toml (objectAlias)")
        if kind == "Secret":
            for key, text in doc.get("stringData", {}).items():
                if key.endswith(".toml"):
                    try:
                        keys = tomllib.loads(text)
                    except tomllib.TOMLDecodeError as error:
                        errors.append(f"{name}: {key}: {error}")
                        continue
                    if set(keys) - {"keys"}:
                        errors.append(f"{name}: {key}: only [[keys]] tables belong in a keys file")
                    for entry in keys.get("keys", []):
                        if set(entry) - KEY_FIELDS:
                            errors.append(f"{name}: {key}: unknown fields {sorted(set(entry) - KEY_FIELDS)}")
                        if not {"id", "sha256"} <= set(entry):
                            errors.append(f"{name}: {key}: every key needs id and sha256")
        if kind == "ScaledObject":
            for trigger in doc["spec"].get("triggers", []):
                if trigger.get("type") != "prometheus":
                    continue
                meta = trigger.get("metadata", {})
                for key in meta:
                    if key not in KEDA_PROMETHEUS_METADATA:
                        errors.append(f"{name}: trigger metadata {key} is not a Prometheus scaler parameter")
                try:
                    parse_promql(meta.get("query", ""))
                    float(meta.get("threshold", "x"))
                except ValueError as error:
                    errors.append(f"{name}: trigger query or threshold: {error}")
        if kind == "HorizontalPodAutoscaler":
            for metric in doc["spec"].get("metrics", []):
                metric_name = metric.get(metric["type"].lower(), {}).get("metric", {}).get("name")
                if metric["type"] in ("Pods", "Object") and metric_name not in adapter_names:
                    errors.append(f"{name}: metric {metric_name} is not exposed by prometheus-adapter-rules.yaml "
                                  f"({sorted(adapter_names)})")
        kserve_envs = []
        if kind == "ClusterServingRuntime":
            kserve_envs = [e["name"] for c in doc["spec"].get("containers", []) for e in c.get("env", [])]
        if kind == "InferenceService":
            kserve_envs = [e["name"] for e in doc["spec"]["predictor"].get("model", {}).get("env", [])]
        for var in kserve_envs:
            if var.startswith("INFERD_") and var not in known_env:
                errors.append(f"{name}: env {var} is not read by inferd")
        if kind == "ClusterServingRuntime":
            runtime_formats[doc["metadata"]["name"]] = {f["name"] for f in doc["spec"]["supportedModelFormats"]}
            containers = doc["spec"]["containers"]
            if [c["name"] for c in containers][:1] != ["kserve-container"]:
                errors.append(f"{name}: the model server container must be named kserve-container")
            args = containers[0].get("args", [])
            if "--model" in args:
                spec_arg = args[args.index("--model") + 1]
                errors += check_model_specs(spec_arg, name)
                if "/mnt/models" not in spec_arg or "{{.Name}}" not in spec_arg:
                    errors.append(f"{name}: --model must serve /mnt/models under the InferenceService's name ({{{{.Name}}}})")
            if doc["spec"].get("protocolVersions") != ["v2"]:
                errors.append(f"{name}: protocolVersions must be [v2]")
    for path, doc in kubernetes_documents(root):
        if doc.get("kind") == "InferenceService":
            name = f"{path.relative_to(root)}: InferenceService/{doc['metadata']['name']}"
            model = doc["spec"]["predictor"]["model"]
            if model.get("protocolVersion") != "v2":
                errors.append(f"{name}: protocolVersion must be v2 (KServe's default, v1, is not inferd's)")
            runtime = model.get("runtime", "inferd")
            if model["modelFormat"]["name"] not in runtime_formats.get(runtime, set()):
                errors.append(f"{name}: format {model['modelFormat']['name']} is not one runtime {runtime} supports")
    return errors


def check_adapter_rules(root):
    errors = []
    path = root / "examples/kubernetes/prometheus-adapter-rules.yaml"
    config = yaml.safe_load(path.read_text())
    for error in jsonschema.Draft7Validator(ADAPTER_SCHEMA).iter_errors(config):
        errors.append(f"{path.relative_to(root)}: {'.'.join(map(str, error.absolute_path))}: {error.message}")
    for rule in config.get("rules", []):
        for field in ("seriesQuery", "metricsQuery"):
            try:
                parse_promql(rule.get(field, "up"), adapter=True)
            except ValueError as error:
                errors.append(f"{path.relative_to(root)}: {field} {rule.get(field)!r}: {error}")
    return errors


def check_azureml(root):
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    errors = []
    folder = root / "examples/azureml"
    try:
        endpoint = load_online_endpoint(str(folder / "endpoint.yml"))
    except Exception as error:  # the loader raises marshmallow's and its own errors
        return [f"examples/azureml/endpoint.yml: {error}"]
    try:
        deployment = load_online_deployment(str(folder / "deployment.yml"))
    except Exception as error:
        return [f"examples/azureml/deployment.yml: {error}"]
    if deployment.endpoint_name != endpoint.name:
        errors.append("deployment.yml: endpoint_name is not endpoint.yml's name")
    config = deployment.environment.inference_config
    routes = {key: config.get(key, {}) for key in ("livenessRoute", "readinessRoute", "scoringRoute")}
    env = deployment.environment_variables or {}
    if routes["livenessRoute"] != {"port": 8080, "path": "/v2/health/live"}:
        errors.append(f"deployment.yml: liveness_route {routes['livenessRoute']}")
    if routes["readinessRoute"] != {"port": 8080, "path": "/v2/health/ready"}:
        errors.append(f"deployment.yml: readiness_route {routes['readinessRoute']}")
    models = env.get("INFERD_MODELS", "")
    errors += check_model_specs(models, "deployment.yml: INFERD_MODELS")
    served = {m.group(1) for m in re.finditer(r",name=([^,;]+)", models)}
    scoring = routes["scoringRoute"]
    if scoring.get("port") != 8080 or not any(scoring.get("path") == f"/v2/models/{m}/infer" for m in served):
        errors.append(f"deployment.yml: scoring_route {scoring} is not /v2/models/<a served model>/infer on 8080")
    if "${AZUREML_MODEL_DIR}" not in models:
        errors.append("deployment.yml: INFERD_MODELS should find the model under ${AZUREML_MODEL_DIR}")
    if env.get("INFERD_ALLOW_UNAUTHENTICATED") != "true":
        errors.append("deployment.yml: INFERD_ALLOW_UNAUTHENTICATED must be true (no keys file; the endpoint authenticates)")
    timeout_ms = deployment.request_settings.request_timeout_ms
    if not timeout_ms or timeout_ms > 180000:
        errors.append(f"deployment.yml: request_timeout_ms {timeout_ms}: Azure ML allows at most 180000")
    elif duration_seconds(env.get("INFERD_REQUEST_TIMEOUT", "30s")) * 1000 >= timeout_ms:
        errors.append("deployment.yml: INFERD_REQUEST_TIMEOUT must be below request_timeout_ms, so that inferd answers first")
    known = env_names_read(root)
    for var in env:
        if var.startswith("INFERD_") and var not in known:
            errors.append(f"deployment.yml: env {var} is not read by inferd")
    return errors


def dashboard_exprs(root):
    dashboard = json.loads((root / "examples/grafana/dashboard.json").read_text())
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            yield panel, target


def check_dashboard(root):
    errors = []
    path = root / "examples/grafana/dashboard.json"
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        return [f"dashboard.json: {error}"]
    if dashboard.get("schemaVersion", 0) < 39:
        errors.append("dashboard.json: schemaVersion must be 39 or later")
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    source = variables.get("datasource", {})
    if source.get("type") != "datasource" or source.get("query") != "prometheus":
        errors.append("dashboard.json: needs a 'datasource' variable of type datasource for prometheus")
    if variables.get("model", {}).get("type") != "query":
        errors.append("dashboard.json: needs a 'model' query variable")
    for variable in variables.values():
        if variable.get("type") == "query":
            query = variable.get("query", {})
            text = query.get("query") if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_]+)\)", text or "")
            if not match:
                errors.append(f"dashboard.json: variable {variable['name']}: not label_values(selector, label)")
            else:
                try:
                    parse_promql(match.group(1), grafana=True)
                except ValueError as error:
                    errors.append(f"dashboard.json: variable {variable['name']}: {error}")
    ids = [panel.get("id") for panel in dashboard.get("panels", [])]
    if len(ids) != len(set(ids)):
        errors.append("dashboard.json: panel ids are not unique")
    wanted = {"uid": "${datasource}", "type": "prometheus"}
    for panel in dashboard.get("panels", []):
        title = panel.get("title", "?")
        if panel.get("type") == "row":
            continue
        if panel.get("datasource") != wanted:
            errors.append(f"dashboard.json: panel {title!r}: datasource must be {wanted}")
        if not panel.get("targets"):
            errors.append(f"dashboard.json: panel {title!r}: no targets")
        for target in panel.get("targets", []):
            if target.get("datasource") != wanted or not target.get("refId") or not target.get("expr"):
                errors.append(f"dashboard.json: panel {title!r}: a target lacks datasource, refId or expr")
                continue
            try:
                parse_promql(target["expr"], grafana=True)
            except ValueError as error:
                errors.append(f"dashboard.json: panel {title!r}: {target['expr']!r}: {error}")
    return errors


def check_alerts(root):
    errors = []
    path = root / "examples/grafana/alerts.yaml"
    rules_file = yaml.safe_load(path.read_text())
    if set(rules_file) != {"groups"}:
        errors.append("alerts.yaml: a rule file holds only groups")
    names = set()
    for group in rules_file.get("groups", []):
        if set(group) - {"name", "interval", "rules", "limit", "query_offset", "labels"}:
            errors.append(f"alerts.yaml: group {group.get('name')}: unknown fields")
        for rule in group.get("rules", []):
            label = rule.get("alert") or rule.get("record") or "?"
            allowed = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"} if "alert" in rule else {"record", "expr", "labels"}
            if set(rule) - allowed:
                errors.append(f"alerts.yaml: {label}: unknown fields {sorted(set(rule) - allowed)}")
            try:
                parse_promql(rule.get("expr", ""))
            except ValueError as error:
                errors.append(f"alerts.yaml: {label}: expr: {error}")
            if "alert" in rule:
                if label in names:
                    errors.append(f"alerts.yaml: {label} defined twice")
                names.add(label)
                if not re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))):
                    errors.append(f"alerts.yaml: {label}: needs a 'for' duration")
                if rule.get("labels", {}).get("severity") not in ("page", "ticket", "info"):
                    errors.append(f"alerts.yaml: {label}: labels.severity must be page, ticket or info")
                if not {"summary", "description"} <= set(rule.get("annotations", {})):
                    errors.append(f"alerts.yaml: {label}: annotations need summary and description")
    operator = root / "examples/grafana/prometheus-rule.yaml"
    if operator.exists():
        docs = load_yaml_docs(operator)
        if len(docs) != 1 or docs[0].get("spec") != rules_file:
            errors.append("prometheus-rule.yaml: its spec differs from alerts.yaml "
                          "(python3 tests/deploy/check.py --write-prometheus-rule)")
    return errors


def check_systemd_unit(root):
    errors = []
    path = root / "examples/azure-vm/inferd.service"
    text = path.read_text()
    settings = dict(re.findall(r"^([A-Za-z]+)=(.*)$", text, re.M))
    if settings.get("KillSignal") != "SIGTERM" or "HUP" not in settings.get("ExecReload", ""):
        errors.append("inferd.service: needs KillSignal=SIGTERM and an ExecReload that sends SIGHUP")
    if settings.get("User") != "inferd" or settings.get("Restart") != "on-failure":
        errors.append("inferd.service: needs User=inferd and Restart=on-failure")
    readme = (root / "examples/azure-vm/README.md").read_text()
    delay = re.search(r"^INFERD_DRAIN_DELAY=(\S+)", readme, re.M)
    timeout = re.search(r"^INFERD_DRAIN_TIMEOUT=(\S+)", readme, re.M)
    if delay and timeout:
        total = duration_seconds(delay.group(1)) + duration_seconds(timeout.group(1))
        if duration_seconds(settings.get("TimeoutStopSec", "0") + "s") <= total:
            errors.append(f"inferd.service: TimeoutStopSec must exceed the README's drain delay + timeout ({total:g}s)")
    analyze = shutil.which("systemd-analyze")
    if analyze:
        with tempfile.TemporaryDirectory() as tmp:
            unit = pathlib.Path(tmp) / "inferd.service"
            unit.write_text(re.sub(r"^ExecStart=.*$", "ExecStart=/bin/true", text, flags=re.M))
            result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
            if result.returncode != 0 or result.stderr.strip():
                errors.append(f"inferd.service: systemd-analyze verify: {result.stderr.strip()}")
    else:
        print("   (systemd-analyze is not installed: inferd.service checked for its settings only)")
    return errors


def referenced_metrics(root):
    """(name, label names it is selected by, where) for every metric the artefacts query."""
    refs = []

    def add(expr, where, **kwargs):
        for name, matchers in selectors(parse_promql(expr, **kwargs)):
            if name is not None:
                refs.append((name, {label for label, _, _ in matchers}, where))

    for panel, target in dashboard_exprs(root):
        add(target["expr"], f"dashboard.json {panel.get('title')!r}", grafana=True)
    dashboard = json.loads((root / "examples/grafana/dashboard.json").read_text())
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            add(re.fullmatch(r"label_values\((.*),\s*[a-zA-Z_]+\)", query).group(1), f"dashboard.json ${variable['name']}",
                grafana=True)
    for group in yaml.safe_load((root / "examples/grafana/alerts.yaml").read_text())["groups"]:
        for rule in group["rules"]:
            add(rule["expr"], f"alerts.yaml {rule.get('alert') or rule.get('record')}")
    adapter = yaml.safe_load((root / "examples/kubernetes/prometheus-adapter-rules.yaml").read_text())
    for rule in adapter["rules"]:
        add(rule["seriesQuery"], "prometheus-adapter-rules.yaml")
        series = rule["seriesQuery"].split("{")[0]
        add(rule["metricsQuery"].replace("<<.Series>>", series).replace("<<.LabelMatchers>>", 'namespace="x"')
            .replace("<<.GroupBy>>", "pod"), "prometheus-adapter-rules.yaml")
    for doc in load_yaml_docs(root / "examples/kubernetes/keda-scaledobject.yaml"):
        for trigger in doc["spec"]["triggers"]:
            add(trigger["metadata"]["query"], "keda-scaledobject.yaml")
    return refs


def check_metric_names_declared(root):
    """Every referenced metric is one inferd's source declares (offline)."""
    errors = []
    declared, histograms, _ = declared_metrics(root)
    for name, _, where in referenced_metrics(root):
        if family(name, histograms) not in declared:
            errors.append(f"{where}: {name} is not a metric inferd declares (crates/inferd-core/src/metrics)")
    return sorted(set(errors))


def check_metric_names_exported(root, texts):
    """Every referenced metric is exported by at least one of the servers whose /metrics texts
    are given; GPU metrics may be missing where NVML is (only if gpu.rs declares them); label
    names the queries select on must appear on the metric."""
    from prometheus_client.parser import text_string_to_metric_families

    errors, notes = [], []
    exported = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            labels = exported.setdefault(fam.name, set())
            for sample in fam.samples:
                labels.update(sample.labels)
            if fam.type == "counter":  # the parser names counters without _total
                exported.setdefault(fam.name + "_total", set()).update(labels)
    _, histograms, gpu = declared_metrics(root)
    for name, labels, where in referenced_metrics(root):
        base = family(name, histograms)
        if base not in exported:
            if base in gpu:
                notes.append(f"{base} is not exported by these servers (no NVML or GPU) but is declared in gpu.rs")
            else:
                errors.append(f"{where}: {name} is not exported by any server in INFERD_METRICS_URLS")
            continue
        missing = labels - exported[base] - TARGET_LABELS - ({"le"} if name.endswith("_bucket") else set())
        if missing:
            errors.append(f"{where}: {name} has no label {sorted(missing)} (it has {sorted(exported[base])})")
    return sorted(set(errors)), sorted(set(notes))


def write_prometheus_rule(root):
    rules = yaml.safe_load((root / "examples/grafana/alerts.yaml").read_text())
    header = (
        "# The rules of alerts.yaml as a PrometheusRule, for the Prometheus Operator (kube-prometheus-stack).\n"
        "# Generated from alerts.yaml by `python3 tests/deploy/check.py --write-prometheus-rule`; .ci/check-deploy\n"
        "# fails when the two differ. The Prometheus' ruleSelector must match the labels below\n"
        "# (kube-prometheus-stack selects release: <its release name> by default). Azure Monitor managed\n"
        "# Prometheus takes rule groups as Azure resources (Microsoft.AlertsManagement/prometheusRuleGroups)\n"
        "# instead of this object.\n"
    )
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "inferd", "namespace": "monitoring", "labels": {"app.kubernetes.io/name": "inferd"}},
        "spec": rules,
    }

    class Literal(str):
        pass

    def literal(dumper, value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    def strings(node):
        if isinstance(node, dict):
            return {k: strings(v) for k, v in node.items()}
        if isinstance(node, list):
            return [strings(v) for v in node]
        return Literal(node) if isinstance(node, str) else node

    yaml.add_representer(Literal, literal, Dumper=yaml.SafeDumper)
    text = yaml.safe_dump(strings(doc), sort_keys=False, width=120)
    (root / "examples/grafana/prometheus-rule.yaml").write_text(header + text)


CHECKS = [
    ("Dockerfiles (hadolint)", check_dockerfiles),
    ("Kubernetes and CRD schemas, strict", check_kubernetes_schemas),
    ("manifests' settings and cross-references", check_kubernetes_semantics),
    ("Prometheus adapter rules", check_adapter_rules),
    ("Azure ML endpoint and deployment (azure-ai-ml loaders)", check_azureml),
    ("Grafana dashboard", check_dashboard),
    ("alert rules", check_alerts),
    ("systemd unit", check_systemd_unit),
    ("metric names declared by inferd", check_metric_names_declared),
]


# ---------------------------------------------------------------------------------------------
# self-test: each mutation must make its check fail

MUTATIONS = [
    # (file, text, replacement, check, a fragment the error must contain)
    ("examples/kubernetes/deployment-cpu.yaml", "imagePullPolicy:", "imagePullPolcy:", check_kubernetes_schemas, "imagePullPolcy"),
    ("examples/kubernetes/pdb.yaml", "maxUnavailable: 1", "maxUnavailable: 1\n  maxUnavailble: 1", check_kubernetes_schemas, "maxUnavailble"),
    ("examples/kserve/cluster-serving-runtime.yaml", "supportedModelFormats:", "supportedModelFormat:", check_kubernetes_schemas, "supportedModelFormat"),
    ("examples/kserve/inferenceservice-gguf.yaml", "      storageUri: ", "      storageURI: ", check_kubernetes_schemas, "storageURI"),
    ("examples/kubernetes/keda-scaledobject.yaml", "cooldownPeriod:", "coolDownPeriod:", check_kubernetes_schemas, "coolDownPeriod"),
    ("examples/kubernetes/secret-provider-class.yaml", "provider: azure", "providr: azure", check_kubernetes_schemas, "providr"),
    ("examples/kubernetes/secret-provider-class.yaml", "objectAlias:", "objectAlais:", check_kubernetes_semantics, "objectAlais"),
    ("examples/kubernetes/keda-scaledobject.yaml", "serverAddress:", "serverAdress:", check_kubernetes_semantics, "serverAdress"),
    ("examples/kubernetes/secret-keys.yaml", "tokens_per_minute = 200000", "token_per_minute = 200000", check_kubernetes_semantics, "token_per_minute"),
    ("examples/kubernetes/deployment-gpu.yaml", "terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: 30", check_kubernetes_semantics, "terminationGracePeriodSeconds"),
    ("examples/kubernetes/deployment-cpu.yaml", "name: INFERD_DRAIN_TIMEOUT", "name: INFERD_DRAIN_TIMOUT", check_kubernetes_semantics, "INFERD_DRAIN_TIMOUT"),
    ("examples/kserve/cluster-serving-runtime.yaml", "name: INFERD_ALLOW_UNAUTHENTICATED", "name: INFERD_ALLOW_UNAUTHENTICATE", check_kubernetes_semantics, "INFERD_ALLOW_UNAUTHENTICATE"),
    ("examples/kubernetes/hpa.yaml", "name: inferd_model_busy_ratio", "name: inferd_model_busy", check_kubernetes_semantics, "inferd_model_busy"),
    ("examples/kubernetes/prometheus-adapter-rules.yaml", "metricsQuery:", "metricQuery:", check_adapter_rules, "metricQuery"),
    ("examples/azureml/deployment.yml", "request_timeout_ms:", "request_timeout:", check_azureml, "request_timeout"),
    ("examples/azureml/endpoint.yml", "auth_mode: key", "auth_mode: key\nauth_mod: key", check_azureml, "auth_mod"),
    ("examples/grafana/dashboard.json", '"refId": "A"', '"refid": "A"', check_dashboard, "lacks"),
    ("examples/grafana/dashboard.json", "sum by (reason) (rate(", "sum by (reason) (rate((", check_dashboard, "paren"),
    ("examples/grafana/dashboard.json", "inferd_queue_depth{", "inferd_queue_dpeth{", check_metric_names_declared, "inferd_queue_dpeth"),
    ("examples/grafana/alerts.yaml", "expr: inferd_model_ready == 0", "expr: inferd_model_ready = 0", check_alerts, "InferdModelNotReady"),
    ("examples/grafana/alerts.yaml", "for: 5m", "fro: 5m", check_alerts, "InferdModelNotReady"),
    ("examples/grafana/alerts.yaml", "inferd_gpu_memory_used_bytes /", "inferd_gpu_memory_usage_bytes /", check_metric_names_declared, "inferd_gpu_memory_usage_bytes"),
    ("examples/azure-vm/inferd.service", "TimeoutStopSec=45", "TimeoutStopSec=30", check_systemd_unit, "TimeoutStopSec"),
    ("Dockerfile.cpu", "ENTRYPOINT", "MAINTAINER someone\nENTRYPOINT", check_dockerfiles, "DL4000"),
]
# Only when the grace-period arithmetic above can be seen through a preStop sleep too.
MUTATIONS_PRESTOP = [
    ("examples/kubernetes/deployment-cpu.yaml", "          startupProbe:", "          lifecycle:\n            preStop:\n              sleep:\n                seconds: 10\n          startupProbe:", check_kubernetes_semantics, "preStop"),
]


def copy_tree(root, target):
    for rel in ("examples", "tests/deploy", "crates/inferd-core/src/metrics", "src"):
        shutil.copytree(root / rel, target / rel)
    for rel in ("Dockerfile.cpu", "Dockerfile.cuda", ".hadolint.yaml"):
        shutil.copy2(root / rel, target / rel)
    for path in (root / "crates").glob("*/src"):
        dest = target / path.relative_to(root)
        if not dest.exists():
            shutil.copytree(path, dest)


def self_test(root):
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        clean = pathlib.Path(tmp) / "clean"
        copy_tree(root, clean)
        for rel, old, new, check, fragment in MUTATIONS + MUTATIONS_PRESTOP:
            work = pathlib.Path(tmp) / "work"
            if work.exists():
                shutil.rmtree(work)
            shutil.copytree(clean, work)
            path = work / rel
            text = path.read_text()
            if old not in text:
                errors.append(f"self-test: {rel} no longer contains {old!r}: update the mutation")
                continue
            path.write_text(text.replace(old, new, 1))
            found = check(work)
            if not found:
                errors.append(f"self-test: {check.__name__} passed on {rel} with {old!r} -> {new!r}")
            elif not any(fragment in error for error in found):
                errors.append(f"self-test: {check.__name__} failed on {rel} ({old!r} -> {new!r}) but not naming "
                              f"{fragment!r}: {found[:3]}")
        # The live check: an exposition of every declared metric passes; one without
        # inferd_queue_depth does not; one without the GPU metrics passes with a note.
        declared, histograms, gpu = declared_metrics(clean)
        def exposition(names):
            lines = []
            for name in sorted(names):
                if name in histograms:
                    lines += [f"# TYPE {name} histogram", f'{name}_bucket{{model="m",stage="s",endpoint="e",status="200",le="1"}} 1',
                              f'{name}_bucket{{model="m",stage="s",endpoint="e",status="200",le="+Inf"}} 1',
                              f'{name}_sum{{model="m",stage="s",endpoint="e",status="200"}} 1',
                              f'{name}_count{{model="m",stage="s",endpoint="e",status="200"}} 1']
                else:
                    kind = "counter" if name.endswith("_total") else "gauge"
                    lines += [f"# TYPE {name} {kind}",
                              f'{name}{{model="m",endpoint="e",status="200",reason="r",kind="k",quantile="0.95",device="cuda:0",level="avx2"}} 1']
            return "\n".join(lines) + "\n"
        everything, _ = check_metric_names_exported(clean, [exposition(declared)])
        if everything:
            errors.append(f"self-test: the live check failed on a complete exposition: {everything[:3]}")
        missing, _ = check_metric_names_exported(clean, [exposition(declared - {"inferd_queue_depth"})])
        if not any("inferd_queue_depth" in e for e in missing):
            errors.append("self-test: the live check passed without inferd_queue_depth")
        unlabelled = exposition(declared).replace('quantile="0.95",', "")
        wrong, _ = check_metric_names_exported(clean, [unlabelled])
        if not any("quantile" in e for e in wrong):
            errors.append("self-test: the live check passed with the window gauge lacking its quantile label")
        no_gpu, notes = check_metric_names_exported(clean, [exposition(declared - gpu)])
        if no_gpu or not notes:
            errors.append(f"self-test: without GPU metrics the live check should pass with a note: {no_gpu[:3]}")
    return errors


def main():
    if "--write-prometheus-rule" in sys.argv:
        write_prometheus_rule(ROOT)
        print("wrote examples/grafana/prometheus-rule.yaml")
        return 0
    passed = failed = 0

    def report(title, errors):
        nonlocal passed, failed
        if errors:
            failed += 1
            print(f"FAIL {title}")
            for error in errors:
                print("     " + error.replace("\n", "\n     "))
        else:
            passed += 1
            print(f"ok   {title}")
        sys.stdout.flush()

    for title, check in CHECKS:
        try:
            errors = check(ROOT)
        except Exception as error:  # a crash in a check is a failure, with its reason
            errors = [f"{type(error).__name__}: {error}"]
        report(title, errors)
    report(f"self-test: {len(MUTATIONS) + len(MUTATIONS_PRESTOP) + 4} broken copies are each refused", self_test(ROOT))

    urls = os.environ.get("INFERD_METRICS_URLS", "").split()
    if urls:
        texts, errors = [], []
        for url in urls:
            try:
                with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as response:
                    texts.append(response.read().decode())
            except OSError as error:
                errors.append(f"{url}/metrics: {error}")
        if not errors:
            errors, notes = check_metric_names_exported(ROOT, texts)
            for note in notes:
                print(f"     note: {note}")
        report(f"metric names exported by {' '.join(urls)}", errors)
    else:
        print("     (INFERD_METRICS_URLS not set: metric names checked against the source only)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
