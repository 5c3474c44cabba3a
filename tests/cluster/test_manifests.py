"""The cluster manifests are checked the way the platforms would check them, without a cluster.

Every YAML under ``cluster/kuberay/`` is validated against the KubeRay CRDs' ``openAPIV3Schema``
(read from ``../shared/kuberay-crds/`` relative to the repository root; the tests skip with a message
when that folder is absent) and every YAML under ``cluster/launcher/`` against the ``ray-schema.json``
that ships inside the ray package. On top of the schemas, the rules the schemas do not carry are
checked: KubeRay's webhook/controller validation (a RayJob needs ``rayClusterSpec`` or
``clusterSelector``, replica bounds, name lengths, token auth needs Ray >= 2.52) and this project's
own (token auth everywhere, the store on shared object storage, the image matching ``rayVersion``).

Kubernetes schema extensions are treated as the API server treats them: an object schema with
``properties`` and no ``x-kubernetes-preserve-unknown-fields`` rejects unknown keys (kubectl's strict
field validation), ``x-kubernetes-list-type: map/set`` requires unique keys/items, and the CEL
``x-kubernetes-validations`` that can be evaluated without the old object are evaluated.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from jsonschema import ValidationError

REPO = Path(__file__).resolve().parents[2]
KUBERAY_DIR = REPO / "cluster" / "kuberay"
LAUNCHER_DIR = REPO / "cluster" / "launcher"
CRD_DIR = Path(os.environ.get("RAYMLOPS_KUBERAY_CRDS", REPO.parent / "shared" / "kuberay-crds"))

MIN_TOKEN_AUTH_RAY = (2, 52, 0)
# KubeRay's limits (ray-operator/controllers/ray/utils/constant.go): generated child names append suffixes.
MAX_NAME_LENGTH = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SHARED_STORE = re.compile(r"^(s3|gs|gcs|abfs|az|hdfs)://[^/]+")
# Kubernetes' own kinds the folder may hold, with their apiVersion.
CORE_KINDS = {
    "ConfigMap": "v1",
    "ServiceAccount": "v1",
    "Secret": "v1",
    "Service": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}


# --------------------------------------------------------------------------------------------------
# loading


def _yaml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))


# The CRDs are 1 MB each: the C loader reads them in a second where the pure-Python one takes ten.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.load_all(path.read_text(), Loader=_Loader) if d is not None]
    assert docs, f"{path} holds no YAML document"
    for d in docs:
        assert isinstance(d, dict), f"{path}: every document must be a mapping"
    return docs


def _all_kuberay_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in _yaml_files(KUBERAY_DIR) for d in _docs(p)]


def _ray_resources() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p, d in _all_kuberay_docs() if str(d.get("apiVersion", "")).startswith("ray.io/")]


def _by_kind(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p, d in _ray_resources() if d["kind"] == kind]


def _id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# --------------------------------------------------------------------------------------------------
# Kubernetes structural schemas as JSON Schema


def _to_strict(node: Any) -> Any:
    """Copy of an openAPIV3Schema with Kubernetes' rules expressed in JSON Schema terms."""
    if isinstance(node, list):
        return [_to_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_strict(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        # The API server prunes unknown fields and kubectl's (default) strict validation refuses
        # them: a misspelled key must fail here too, not vanish.
        out["additionalProperties"] = False
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


_CEL_TOKEN = re.compile(
    r"\s*(?:(?P<has>has\(self\.(?P<field>[A-Za-z_][A-Za-z0-9_]*)\))|(?P<op>&&|\|\||!)"
    r"|(?P<lit>'[^']*')|(?P<punct>[()\[\],])|(?P<word>self|in))"
)


def _cel_to_python(rule: str) -> str | None:
    """Translate the CEL subset the KubeRay CRDs use (has(), !, &&, ||, `in` a list); None if other."""
    if "oldSelf" in rule:
        return None  # transition rules need the stored object; nothing to check on create
    pos, parts = 0, []
    while pos < len(rule):
        m = _CEL_TOKEN.match(rule, pos)
        if not m or m.end() == pos:
            if rule[pos:].strip() == "":
                break
            return None
        pos = m.end()
        if m.group("has"):
            parts.append(f"({m.group('field')!r} in self)")
        elif m.group("op"):
            parts.append({"&&": "and", "||": "or", "!": "not"}[m.group("op")])
        else:
            parts.append(m.group(0).strip())
    return " ".join(parts)


def _x_validations(
    validator: Any, rules: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    for rule in rules:
        expr = _cel_to_python(rule["rule"])
        if expr is None:
            continue
        if not eval(expr, {"__builtins__": {}}, {"self": instance}):  # noqa: S307 - a translated CEL subset
            yield ValidationError(rule.get("message", f"CEL rule failed: {rule['rule']}"))


def _x_list_type(
    validator: Any, list_type: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not isinstance(instance, list) or list_type == "atomic":
        return
    if list_type == "set":
        seen = [json.dumps(i, sort_keys=True) for i in instance]
        dupes = sorted({s for s in seen if seen.count(s) > 1})
        if dupes:
            yield ValidationError(f"x-kubernetes-list-type=set holds duplicates: {dupes}")
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        item_props = schema.get("items", {}).get("properties", {})
        seen_keys: list[tuple[Any, ...]] = []
        for item in instance:
            if not isinstance(item, dict):
                continue
            # A missing key takes its schema default (ports: protocol defaults to TCP).
            seen_keys.append(tuple(item.get(k, item_props.get(k, {}).get("default")) for k in keys))
        dupes = sorted({str(k) for k in seen_keys if seen_keys.count(k) > 1})
        if dupes:
            yield ValidationError(f"list keyed by {keys} repeats key(s) {dupes}")


K8sValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,
    {"x-kubernetes-validations": _x_validations, "x-kubernetes-list-type": _x_list_type},
)


@cache
def _crd_validators() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> validator, for every served version of every CRD in CRD_DIR."""
    out: dict[tuple[str, str], Any] = {}
    for path in _yaml_files(CRD_DIR):
        for crd in _docs(path):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                schema = _to_strict(version["schema"]["openAPIV3Schema"])
                out[(f"{group}/{version['name']}", kind)] = K8sValidator(schema)
    return out


@pytest.fixture(scope="module")
def crds() -> dict[tuple[str, str], Any]:
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR} (set RAYMLOPS_KUBERAY_CRDS to their folder)")
    validators = _crd_validators()
    if not validators:
        pytest.skip(f"no CustomResourceDefinition in {CRD_DIR}")
    return validators


def _schema_errors(crds: dict[tuple[str, str], Any], doc: dict[str, Any]) -> list[str]:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in crds:
        return [f"no CRD serves {key}; known: {sorted(crds)}"]
    errors = sorted(crds[key].iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in errors]


# --------------------------------------------------------------------------------------------------
# rules the schemas do not carry (KubeRay's validation.go, and this project's)


def _version_tuple(text: str) -> tuple[int, ...] | None:
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text.strip())
    return tuple(int(x) for x in m.groups()) if m else None


def _groups(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    head = ("head", spec.get("headGroupSpec", {}))
    return [head] + [(g.get("groupName", "?"), g) for g in spec.get("workerGroupSpecs", [])]


def _ray_container(group: dict[str, Any]) -> dict[str, Any]:
    containers = group.get("template", {}).get("spec", {}).get("containers", [])
    return containers[0] if containers else {}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def cluster_spec_problems(spec: dict[str, Any], *, owner: str) -> list[str]:
    """Problems in a RayClusterSpec (standalone, or embedded in a RayJob/RayService)."""
    problems: list[str] = []
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    names = [g.get("groupName") for g in spec.get("workerGroupSpecs", [])]
    if len(names) != len(set(names)):
        problems.append(f"worker group names repeat: {names}")
    for name, group in _groups(spec):
        containers = group.get("template", {}).get("spec", {}).get("containers", [])
        if not containers:
            problems.append(f"{name}: the pod template needs at least one container")
            continue
        params = group.get("rayStartParams", {}) or {}
        if "labels" in params:
            problems.append(f"{name}: rayStartParams['labels'] is not supported; use the group's labels")
        if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get(
            "resources"
        ):
            problems.append(f"{name}: resources set both in rayStartParams and in the group's resources")
        if name != "head":
            lo, hi, n = group.get("minReplicas"), group.get("maxReplicas"), group.get("replicas")
            if not autoscaling and (lo is None or hi is None):
                problems.append(f"{name}: minReplicas and maxReplicas are required without autoscaling")
            if lo is not None and hi is not None and lo > hi:
                problems.append(f"{name}: minReplicas {lo} > maxReplicas {hi}")
            if n is not None and lo is not None and hi is not None and not lo <= n <= hi:
                problems.append(f"{name}: replicas {n} outside [{lo}, {hi}]")
            if any(v is not None and v < 0 for v in (lo, hi, n)):
                problems.append(f"{name}: negative replica count")
    auto = spec.get("autoscalerOptions", {}) or {}
    if auto.get("version") == "v2":
        for name, group in _groups(spec):
            if group.get("template", {}).get("spec", {}).get("restartPolicy") not in (None, "Never"):
                problems.append(f"{name}: restartPolicy must be Never or unset with autoscaler v2")
    if auto.get("idleTimeoutSeconds", 0) < 0:
        problems.append("autoscalerOptions.idleTimeoutSeconds must be non-negative")

    # Token auth: required by this project, and KubeRay's own preconditions for it.
    auth = spec.get("authOptions") or {}
    if auth.get("mode") != "token":
        problems.append("authOptions.mode must be 'token' (the jobs API runs arbitrary code)")
    version = _version_tuple(str(spec.get("rayVersion", "")))
    if version is None:
        problems.append(f"rayVersion must be X.Y.Z, got {spec.get('rayVersion')!r}")
    elif auth.get("mode") == "token" and version < MIN_TOKEN_AUTH_RAY:
        problems.append(f"token auth needs rayVersion >= 2.52.0, got {spec.get('rayVersion')}")
    if auth.get("enableK8sTokenAuth"):
        if owner in ("RayJob", "RayService"):
            problems.append(f"K8s token auth is not supported for a {owner}")
        if auth.get("secretName"):
            problems.append("authOptions.enableK8sTokenAuth and secretName are mutually exclusive")

    # This project: one image per Ray version, store on shared object storage.
    for name, group in _groups(spec):
        container = _ray_container(group)
        if not container:
            continue
        image = container.get("image", "")
        if f"ray{spec.get('rayVersion')}" not in image.rsplit(":", 1)[-1]:
            problems.append(
                f"{name}: image {image!r} does not carry rayVersion {spec.get('rayVersion')} in its tag"
            )
        store = _env(container).get("RAYMLOPS_STORE")
        if not (isinstance(store, str) and SHARED_STORE.match(store)):
            problems.append(f"{name}: RAYMLOPS_STORE must name shared object storage, got {store!r}")
    return problems


def _service_accounts() -> set[str]:
    return {d["metadata"]["name"] for _, d in _all_kuberay_docs() if d.get("kind") == "ServiceAccount"}


def _cluster_spec_of(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec", {})
    return {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayService": spec.get("rayClusterConfig"),
    }[doc["kind"]]


def rayjob_problems(doc: dict[str, Any]) -> list[str]:
    spec = doc.get("spec", {})
    problems: list[str] = []
    selector = spec.get("clusterSelector") or {}
    if spec.get("rayClusterSpec") is None and not selector:
        problems.append("a RayJob needs rayClusterSpec or clusterSelector")
    if selector and not selector.get("ray.io/cluster"):
        problems.append("clusterSelector needs a non-empty 'ray.io/cluster'")
    if selector and spec.get("submissionMode") == "SidecarMode":
        problems.append("clusterSelector is not supported in SidecarMode")
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        problems.append("a suspended RayJob needs shutdownAfterJobFinishes")
    if spec.get("ttlSecondsAfterFinished", 0) < 0:
        problems.append("ttlSecondsAfterFinished must be non-negative")
    if "ttlSecondsAfterFinished" in spec and not spec.get("shutdownAfterJobFinishes"):
        problems.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes")
    for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if key in spec and spec[key] <= 0:
            problems.append(f"{key} must be positive")
    if spec.get("backoffLimit", 0) < 0:
        problems.append("backoffLimit must be non-negative")
    if spec.get("backoffLimit", 0) > 0 and (selector or spec.get("submissionMode") == "InteractiveMode"):
        problems.append("backoffLimit is incompatible with clusterSelector/InteractiveMode")
    if "runtimeEnvYAML" in spec:
        try:
            env = yaml.safe_load(spec["runtimeEnvYAML"])
        except yaml.YAMLError as err:
            problems.append(f"runtimeEnvYAML is not YAML: {err}")
        else:
            if env is not None and not isinstance(env, dict):
                problems.append("runtimeEnvYAML must be a mapping")
    return problems


def _serve_config_problems(text: str) -> list[str]:
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        return [f"serveConfigV2 is not YAML: {err}"]
    problems: list[str] = []
    # Serve's models ignore unknown keys; a typo in a RayService would be dropped silently.
    fields = set(ServeDeploySchema.model_fields)
    problems += [f"serveConfigV2: unknown key {k!r}" for k in raw if k not in fields]
    for app in raw.get("applications", []):
        problems += [
            f"application: unknown key {k!r}" for k in app if k not in ServeApplicationSchema.model_fields
        ]
        for dep in app.get("deployments", []):
            problems += [
                f"deployment: unknown key {k!r}" for k in dep if k not in DeploymentSchema.model_fields
            ]
    try:
        ServeDeploySchema.model_validate(raw)
    except Exception as err:  # pydantic.ValidationError; keep the message
        problems.append(f"serveConfigV2 does not validate as a Serve config: {err}")
    return problems


# --------------------------------------------------------------------------------------------------
# tests: the KubeRay manifests


def test_the_three_kuberay_kinds_exist() -> None:
    kinds = {d["kind"] for _, d in _ray_resources()}
    assert {"RayCluster", "RayJob", "RayService"} <= kinds, kinds


@pytest.mark.parametrize("item", _ray_resources(), ids=_id)
def test_kuberay_resource_matches_crd_schema(
    crds: dict[tuple[str, str], Any], item: tuple[Path, dict]
) -> None:
    path, doc = item
    errors = _schema_errors(crds, doc)
    assert not errors, f"{path.name}: " + "\n".join(errors)


@pytest.mark.parametrize(
    "item",
    [(p, d) for p, d in _all_kuberay_docs() if not str(d.get("apiVersion", "")).startswith("ray.io/")],
    ids=_id,
)
def test_core_objects_are_well_formed(item: tuple[Path, dict]) -> None:
    path, doc = item
    assert doc.get("kind") in CORE_KINDS and doc.get("apiVersion") == CORE_KINDS[doc["kind"]], (
        f"{path.name}: unexpected {doc.get('apiVersion')} {doc.get('kind')}"
    )
    name = doc.get("metadata", {}).get("name", "")
    assert DNS1123_SUBDOMAIN.match(name) and len(name) <= 253, f"{path.name}: bad name {name!r}"
    if doc["kind"] == "ConfigMap":
        assert all(isinstance(v, str) for v in doc.get("data", {}).values()), (
            "ConfigMap data values are strings"
        )
    # A token must never be committed: the token Secret is created with kubectl, not kept here.
    assert doc["kind"] != "Secret", f"{path.name}: do not keep Secrets (tokens, keys) in the repository"


@pytest.mark.parametrize("item", _ray_resources(), ids=_id)
def test_resource_name_is_valid_for_kuberay(item: tuple[Path, dict]) -> None:
    _, doc = item
    name = doc["metadata"]["name"]
    assert DNS1035.match(name), f"{name!r} is not a DNS-1035 label"
    assert len(name) <= MAX_NAME_LENGTH[doc["kind"]], f"{name!r} longer than {MAX_NAME_LENGTH[doc['kind']]}"


@pytest.mark.parametrize("item", _ray_resources(), ids=_id)
def test_cluster_spec_rules(item: tuple[Path, dict]) -> None:
    _, doc = item
    spec = _cluster_spec_of(doc)
    if spec is None:
        assert doc["kind"] == "RayJob" and doc["spec"].get("clusterSelector"), "no cluster spec"
        return
    assert cluster_spec_problems(spec, owner=doc["kind"]) == []
    accounts = _service_accounts()
    for name, group in _groups(spec):
        sa = group.get("template", {}).get("spec", {}).get("serviceAccountName")
        assert sa is None or sa in accounts, (
            f"{name}: ServiceAccount {sa!r} is defined nowhere in {KUBERAY_DIR}"
        )


def test_raycluster_autoscales_cpu_and_gpu_groups() -> None:
    for path, doc in _by_kind("RayCluster"):
        spec = doc["spec"]
        assert spec.get("enableInTreeAutoscaling") is True, path.name
        gpu_groups, cpu_groups = [], []
        for group in spec["workerGroupSpecs"]:
            limits = _ray_container(group).get("resources", {}).get("limits", {})
            (gpu_groups if "nvidia.com/gpu" in limits else cpu_groups).append(group)
            assert group["maxReplicas"] > group["minReplicas"], f"{group['groupName']} cannot scale"
        assert cpu_groups and gpu_groups, f"{path.name}: needs a CPU and a GPU worker group"
        assert all(g["minReplicas"] == 0 for g in gpu_groups), "GPU nodes should scale from zero"


@pytest.mark.parametrize("item", _by_kind("RayJob"), ids=_id)
def test_rayjob_rules(item: tuple[Path, dict]) -> None:
    _, doc = item
    assert rayjob_problems(doc) == []
    assert doc["spec"].get("shutdownAfterJobFinishes") is True, "the job's cluster must go away after the job"


def _entrypoint_script(doc: dict[str, Any]) -> tuple[list[str], str]:
    argv = shlex.split(doc["spec"]["entrypoint"])
    return argv, next(a for a in argv if a.endswith(".py"))


def _jobs_running(script: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p, d in _by_kind("RayJob") if _entrypoint_script(d)[1].endswith(f"jobs/{script}")]


@pytest.mark.parametrize("item", _by_kind("RayJob"), ids=_id)
def test_rayjob_entrypoint_is_a_job_script_of_this_repository(item: tuple[Path, dict]) -> None:
    _, script = _entrypoint_script(item[1])
    assert script.startswith("/home/ray/raymlops/jobs/"), f"{script} is not in the image's jobs/ folder"
    assert (REPO / "jobs" / Path(script).name).is_file(), f"{script} is missing from jobs/"


def test_there_is_a_training_and_a_scoring_job() -> None:
    assert _jobs_running("run_pipeline.py") and _jobs_running("batch_score.py")


@pytest.mark.parametrize("item", _jobs_running("batch_score.py"), ids=_id)
def test_scoring_rayjob_arguments_parse_and_name_shared_storage(item: tuple[Path, dict]) -> None:
    import importlib.util

    argv, script = _entrypoint_script(item[1])
    spec = importlib.util.spec_from_file_location("batch_score", REPO / "jobs" / "batch_score.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen: list[list[str]] = []
    module.run_cli = lambda args: seen.append(args) or 0  # the job's own parser, without running it
    assert module.main(argv[argv.index(script) + 1 :]) == 0
    args = seen[0]
    for flag in ("--input", "--output", "--store"):
        value = args[args.index(flag) + 1]
        assert SHARED_STORE.match(value), f"{flag} {value!r} must be shared object storage"
    assert not args[args.index("--output") + 1].startswith(args[args.index("--input") + 1])


@pytest.mark.parametrize("item", _jobs_running("run_pipeline.py"), ids=_id)
def test_rayjob_runs_the_digits_pipeline_from_its_configmap(item: tuple[Path, dict]) -> None:
    from raymlops.config import parse_pipeline

    path, doc = item
    argv = shlex.split(doc["spec"]["entrypoint"])
    script = next(a for a in argv if a.endswith(".py"))
    assert script.endswith("jobs/run_pipeline.py"), argv
    assert (REPO / "jobs" / "run_pipeline.py").is_file(), "the entrypoint script is missing from jobs/"
    pipeline_arg = argv[argv.index(script) + 1]

    head = doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {
        m["name"]: m["mountPath"]
        for m in _ray_container({"template": {"spec": head}}).get("volumeMounts", [])
    }
    configmaps = {
        d["metadata"]["name"]: d for p, d in _all_kuberay_docs() if p == path and d["kind"] == "ConfigMap"
    }
    found = None
    for volume in head.get("volumes", []):
        cm = volume.get("configMap")
        if not cm or volume["name"] not in mounts:
            continue
        for entry in cm.get(
            "items", [{"key": k, "path": k} for k in configmaps.get(cm["name"], {}).get("data", {})]
        ):
            if f"{mounts[volume['name']].rstrip('/')}/{entry['path']}" == pipeline_arg:
                found = configmaps[cm["name"]]["data"][entry["key"]]
    assert found is not None, f"{pipeline_arg} is not mounted from a ConfigMap in {path.name}"
    cfg = parse_pipeline(yaml.safe_load(found), f"{path.name}:{pipeline_arg}")
    assert cfg.data.source == "builtin://digits"
    assert cfg.store and SHARED_STORE.match(cfg.store), "the pipeline's store must be shared object storage"
    assert cfg.storage_path and SHARED_STORE.match(cfg.storage_path), (
        "Tune storage must be shared by all nodes"
    )


@pytest.mark.parametrize("item", _by_kind("RayService"), ids=_id)
def test_rayservice_serve_config(item: tuple[Path, dict]) -> None:
    _, doc = item
    text = doc["spec"].get("serveConfigV2")
    assert text, "a RayService needs serveConfigV2"
    assert _serve_config_problems(text) == []
    raw = yaml.safe_load(text)
    for app in raw["applications"]:
        assert app["import_path"].startswith("raymlops."), app["import_path"]
        store = app.get("args", {}).get("store") or app.get("runtime_env", {}).get("env_vars", {}).get(
            "RAYMLOPS_STORE"
        )
        assert store and SHARED_STORE.match(store), "the served model must come from shared object storage"


@pytest.mark.parametrize("item", _by_kind("RayService"), ids=_id)
def test_rayservice_serve_config_is_what_raymlops_serve_config_writes(item: tuple[Path, dict]) -> None:
    """serveConfigV2 must be regenerated, not hand-edited: compare it with the generator's output."""
    serve = pytest.importorskip("raymlops.serve")
    if not hasattr(serve, "serve_config"):
        pytest.skip("raymlops.serve.serve_config is not available")
    from raymlops.config import ServeOptions

    raw = yaml.safe_load(item[1]["spec"]["serveConfigV2"])
    for app in raw["applications"]:
        serve.AppArgs.model_validate(app["args"])  # build_app's own check of its args
    app = raw["applications"][0]
    expected = serve.serve_config(
        app["args"]["models"],
        store=app["args"]["store"],
        options=ServeOptions.model_validate(app["args"]["options"]),
        canary=app["args"].get("canary"),
        request_log=app["args"].get("request_log"),
        host=raw["http_options"]["host"],
        port=raw["http_options"]["port"],
    )
    assert raw == expected, (
        "serveConfigV2 differs from `raymlops serve config` output; regenerate it:\n"
        + yaml.safe_dump(expected, sort_keys=False)
    )


# --- the checks have teeth: each must refuse a manifest broken in one place --------------------------


def _raycluster() -> dict[str, Any]:
    return copy.deepcopy(_by_kind("RayCluster")[0][1])


def test_schema_refuses_misspelled_field(crds: dict[tuple[str, str], Any]) -> None:
    doc = _raycluster()
    doc["spec"]["workerGroupSpecs"][0]["maxReplica"] = doc["spec"]["workerGroupSpecs"][0].pop("maxReplicas")
    errors = _schema_errors(crds, doc)
    assert any("maxReplica" in e for e in errors), errors


def test_schema_refuses_misspelled_container_field(crds: dict[tuple[str, str], Any]) -> None:
    doc = _raycluster()
    doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert any("imagePullPolicyy" in e for e in _schema_errors(crds, doc))


def test_schema_refuses_bad_enum_and_type(crds: dict[tuple[str, str], Any]) -> None:
    doc = _raycluster()
    doc["spec"]["authOptions"]["mode"] = "tokens"
    doc["spec"]["workerGroupSpecs"][0]["replicas"] = "one"
    errors = _schema_errors(crds, doc)
    assert any("authOptions.mode" in e for e in errors) and any("replicas" in e for e in errors), errors


def test_schema_refuses_duplicate_list_map_keys(crds: dict[tuple[str, str], Any]) -> None:
    doc = _raycluster()
    containers = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    containers.append(copy.deepcopy(containers[0]))
    assert any("repeats key" in e for e in _schema_errors(crds, doc))


def test_schema_evaluates_cel_rules(crds: dict[tuple[str, str], Any]) -> None:
    doc = copy.deepcopy(_by_kind("RayJob")[0][1])
    doc["spec"]["deletionStrategy"] = {
        "onSuccess": {"policy": "DeleteCluster"},
        "deletionRules": [{"policy": "DeleteCluster", "condition": {"jobStatus": "SUCCEEDED"}}],
    }
    assert any("deletion" in e.lower() or "onSuccess" in e for e in _schema_errors(crds, doc))


def test_cel_translation() -> None:
    assert _cel_to_python("self == oldSelf") is None
    expr = _cel_to_python("!(has(self.jobStatus) && has(self.jobDeploymentStatus))")
    assert expr is not None
    assert eval(expr, {"__builtins__": {}}, {"self": {"jobStatus": "X"}})  # noqa: S307
    assert not eval(expr, {"__builtins__": {}}, {"self": {"jobStatus": "X", "jobDeploymentStatus": "Y"}})  # noqa: S307
    expr = _cel_to_python("self in ['ray.io/kuberay-operator', 'kueue.x-k8s.io/multikueue']")
    assert expr is not None and not eval(expr, {"__builtins__": {}}, {"self": "other"})  # noqa: S307
    assert _cel_to_python("self.size() > 2") is None


def test_rules_refuse_rayjob_without_cluster() -> None:
    doc = copy.deepcopy(_by_kind("RayJob")[0][1])
    del doc["spec"]["rayClusterSpec"]
    assert "a RayJob needs rayClusterSpec or clusterSelector" in rayjob_problems(doc)
    doc["spec"]["clusterSelector"] = {"ray.io/cluster": "raymlops"}
    doc["spec"].pop("backoffLimit", None)
    assert "a RayJob needs rayClusterSpec or clusterSelector" not in rayjob_problems(doc)


def test_rules_refuse_bad_cluster_specs() -> None:
    spec = _raycluster()["spec"]
    spec["workerGroupSpecs"][0]["minReplicas"] = 5
    spec["workerGroupSpecs"][0]["maxReplicas"] = 2
    spec["authOptions"] = {"mode": "disabled"}
    spec["rayVersion"] = "2.51.0"
    spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"] = []
    problems = " | ".join(cluster_spec_problems(spec, owner="RayCluster"))
    for expected in ("minReplicas 5 > maxReplicas 2", "authOptions.mode", "rayVersion", "RAYMLOPS_STORE"):
        assert expected in problems, problems
    spec = _raycluster()["spec"]
    spec["rayVersion"] = "2.51.0"
    assert any("2.52.0" in p for p in cluster_spec_problems(spec, owner="RayCluster"))


def test_rules_refuse_unknown_serve_keys() -> None:
    text = _by_kind("RayService")[0][1]["spec"]["serveConfigV2"]
    raw = yaml.safe_load(text)
    raw["applications"][0]["deployments"][0]["max_ongoing_request"] = 5
    assert any("max_ongoing_request" in p for p in _serve_config_problems(yaml.safe_dump(raw)))


# --------------------------------------------------------------------------------------------------
# tests: the cluster launcher (`ray up`)


@cache
def _ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text())


def _launcher_configs() -> list[Path]:
    return _yaml_files(LAUNCHER_DIR)


def test_a_launcher_config_exists() -> None:
    assert _launcher_configs(), f"no `ray up` YAML in {LAUNCHER_DIR}"


@pytest.mark.parametrize("path", _launcher_configs(), ids=lambda p: p.name)
def test_launcher_matches_ray_schema(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    validator_cls = jsonschema.validators.validator_for(_ray_schema())
    errors = sorted(validator_cls(_ray_schema()).iter_errors(config), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    try:
        from ray.autoscaler._private.util import validate_config
    except ImportError:  # private API; the schema check above stands on its own
        return
    validate_config(copy.deepcopy(config))  # head_node_type known, min_workers within max_workers, ...


@pytest.mark.parametrize("path", _launcher_configs(), ids=lambda p: p.name)
def test_launcher_rules(path: Path) -> None:
    import ray

    config = yaml.safe_load(path.read_text())
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert head in types and len(types) >= 2, "needs a head node type and at least one worker node type"
    for name, node in types.items():
        if name == head:
            continue
        lo, hi = node.get("min_workers", 0), node.get("max_workers", config["max_workers"])
        assert 0 <= lo <= hi, f"{name}: min_workers {lo} > max_workers {hi}"
        assert hi > lo, f"{name}: autoscaling needs room between min_workers and max_workers"
    assert sum(n.get("min_workers", 0) for n in types.values()) <= config["max_workers"]
    # Every node runs the raymlops image (tests/cluster/test_image.py checks its tag); nothing may
    # install another Ray or raymlops over it at start-up.
    docker = config.get("docker") or {}
    assert docker.get("image", "").startswith("ghcr.io/raymlops/raymlops:"), (
        "nodes must run the raymlops image"
    )
    assert f"-ray{ray.__version__}-" in docker["image"], (
        f"{docker['image']} is not built on Ray {ray.__version__}"
    )
    setup = " ; ".join(
        command
        for key in ("setup_commands", "head_setup_commands", "worker_setup_commands")
        for command in config.get(key, [])
    )
    assert not re.search(r"pip3? install", setup), "the image carries Ray and raymlops; do not reinstall them"
    # Token auth: the token reaches every node and Ray starts in token mode on each.
    assert any(str(target).endswith(".ray/auth_token") for target in config.get("file_mounts", {})), (
        "no token mount"
    )
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(c for c in config[key] if "ray start" in c)
        assert "RAY_AUTH_MODE=token" in start, f"{key}: Ray must start with RAY_AUTH_MODE=token"
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" not in head_start, (
        "reach the dashboard through `ray dashboard`'s tunnel"
    )


def test_launcher_schema_refuses_misspelled_key() -> None:
    config = yaml.safe_load(_launcher_configs()[0].read_text())
    config["max_worker"] = config.pop("max_workers")
    validator_cls = jsonschema.validators.validator_for(_ray_schema())
    assert any("max_worker" in e.message for e in validator_cls(_ray_schema()).iter_errors(config))
