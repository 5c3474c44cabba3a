"""The KubeRay manifests are closed by default, checked the way Kubernetes would apply them.

What a cluster operator relies on, each checked on every pod KubeRay will create from the manifests
(head, every worker group, the RayJob submitter) and every container in them (init containers and
KubeRay's autoscaler sidecar included):

- securityContext: non-root as the image's ``ray`` user, no privilege escalation, all capabilities
  dropped, the runtime's seccomp profile, a read-only root filesystem with emptyDir volumes where
  Ray writes (/tmp and /tmp/ray); no host namespaces or host paths; a Kubernetes API token only
  where KubeRay's autoscaler needs one.
- NetworkPolicy: evaluated here with Kubernetes' semantics (a pod selected by a policy of a type is
  isolated for that direction; a connection needs the sender's egress and the receiver's ingress
  allowed) over the labels the pods will carry, KubeRay's own included. Pods of one Ray cluster reach
  each other; nobody else reaches anything but the ports meant for them, and only when labelled.
- ServiceAccounts: training, scoring and serving each their own, bound to cloud roles whose policies
  (cluster/kuberay/iam/) grant read-write, read plus writes under scores/, and read only.
- Secrets: one Ray token per cluster; the serving API key in every container that can host a Serve
  replica, from a Secret; ``create-secrets.sh`` makes exactly these, with fresh random values that
  never appear on a command line.

Each rule is a function returning problems, and each also runs against a copy broken on purpose.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERAY_DIR = REPO / "cluster" / "kuberay"
IAM_DIR = KUBERAY_DIR / "iam"
CREATE_SECRETS = KUBERAY_DIR / "create-secrets.sh"
RAY_UID, RAY_GID = 1000, 100  # the image's `ray` user (Dockerfile: USER 1000:100)
NAMESPACE = "ml"  # where the manifests are applied, for the NetworkPolicy evaluation
READ_ACTIONS = {"s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:GetBucketLocation"}
WRITE_ACTIONS = {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:*", "*"}
STORE_ACCESS = {"train": "read-write", "score": "read-models-write-scores", "serve": "read-only"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# --------------------------------------------------------------------------------------------------
# the objects, and the pods KubeRay makes of them


@cache
def _loaded() -> tuple[tuple[Path, dict[str, Any]], ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(KUBERAY_DIR.glob("*.yaml")):
        out += [(path, d) for d in yaml.load_all(path.read_text(), Loader=loader) if isinstance(d, dict)]
    return tuple(out)


def _docs() -> list[tuple[Path, dict[str, Any]]]:
    """Every object of the folder, read once; tests that change one work on a deep copy."""
    return list(_loaded())


def _ray_resources(docs: list[tuple[Path, dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    return [d for _, d in (docs or _docs()) if str(d.get("apiVersion", "")).startswith("ray.io/")]


def _of_kind(kind: str, docs: list[tuple[Path, dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    return [d for _, d in (docs or _docs()) if d.get("kind") == kind]


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    return {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayService": spec.get("rayClusterConfig"),
    }[doc["kind"]] or {}


def purpose(doc: dict[str, Any]) -> str:
    """train | score | serve: what the cluster is for, hence which cloud role it should hold."""
    if doc["kind"] == "RayService":
        return "serve"
    if doc["kind"] == "RayJob" and "jobs/batch_score.py" in doc["spec"].get("entrypoint", ""):
        return "score"
    return "train"


@dataclass
class Pod:
    where: str
    resource: dict[str, Any]
    role: str  # head | worker | submitter
    spec: dict[str, Any]
    labels: dict[str, str]


@dataclass
class Container:
    where: str
    pod: Pod
    spec: dict[str, Any]


def pods_of(doc: dict[str, Any]) -> list[Pod]:
    """The pods KubeRay creates for a Ray resource, with the labels they will carry.

    KubeRay (common/pod.go labelPod) sets ray.io/* and app.kubernetes.io/* labels and lets the
    template's labels override all but ray.io/node-type, ray.io/group and ray.io/cluster. A RayJob's
    or RayService's RayCluster gets a generated name, hence the suffix.
    """
    name = doc["metadata"]["name"]
    generated = name if doc["kind"] == "RayCluster" else f"{name}-x7k2p"
    spec = cluster_spec(doc)
    groups = [("head", "headgroup", spec.get("headGroupSpec", {}))] + [
        ("worker", g.get("groupName", "?"), g) for g in spec.get("workerGroupSpecs", [])
    ]
    pods = []
    for role, group, g in groups:
        template = g.get("template", {})
        labels = {
            "ray.io/is-ray-node": "yes",
            "app.kubernetes.io/name": "kuberay",
            "app.kubernetes.io/created-by": "kuberay-operator",
        }
        labels.update(template.get("metadata", {}).get("labels", {}))
        labels.update({"ray.io/cluster": generated, "ray.io/node-type": role, "ray.io/group": group})
        where = f"{doc['kind']}/{name} {group}"
        pods.append(Pod(where, doc, role, template.get("spec", {}), labels))
    submitter = doc["spec"].get("submitterPodTemplate") if doc["kind"] == "RayJob" else None
    if doc["kind"] == "RayJob" and doc["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode":
        template = submitter or {"spec": {"containers": [{"name": "ray-job-submitter"}]}}
        labels = dict(template.get("metadata", {}).get("labels", {}))
        labels.update(
            {
                "ray.io/originated-from-cr-name": name,
                "ray.io/originated-from-crd": "RayJob",
                "app.kubernetes.io/created-by": "kuberay-operator",
            }
        )
        pods.append(Pod(f"RayJob/{name} submitter", doc, "submitter", template.get("spec", {}), labels))
    return pods


def containers_of(pod: Pod) -> list[Container]:
    """Every container of the pod as KubeRay runs it: the autoscaler sidecar joins the head."""
    out = [Container(f"{pod.where}/{c.get('name')}", pod, c) for c in pod.spec.get("containers", [])]
    out += [
        Container(f"{pod.where}/init:{c.get('name')}", pod, c) for c in pod.spec.get("initContainers", [])
    ]
    spec = cluster_spec(pod.resource)
    if pod.role == "head" and spec.get("enableInTreeAutoscaling"):
        auto = spec.get("autoscalerOptions") or {}
        mounts = list(auto.get("volumeMounts", []))
        if not any(m["mountPath"] == "/tmp/ray" for m in mounts):  # KubeRay adds its ray-logs emptyDir
            mounts.append({"name": "ray-logs", "mountPath": "/tmp/ray"})
        sidecar = {
            "name": "autoscaler",
            "securityContext": auto.get("securityContext"),
            "volumeMounts": mounts,
        }
        out.append(Container(f"{pod.where}/autoscaler", pod, sidecar))
    return out


def all_pods(docs: list[tuple[Path, dict[str, Any]]] | None = None) -> list[Pod]:
    return [p for d in _ray_resources(docs) for p in pods_of(d)]


# --------------------------------------------------------------------------------------------------
# securityContext


def pod_problems(pod: Pod) -> list[str]:
    sc = pod.spec.get("securityContext") or {}
    problems = []
    if sc.get("runAsNonRoot") is not True:
        problems.append(f"{pod.where}: pod securityContext.runAsNonRoot must be true")
    if sc.get("runAsUser") != RAY_UID or sc.get("runAsGroup") != RAY_GID:
        problems.append(f"{pod.where}: pod must run as {RAY_UID}:{RAY_GID} (the image's ray user)")
    if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{pod.where}: pod seccompProfile must be RuntimeDefault")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.spec.get(key):
            problems.append(f"{pod.where}: {key} must not be set")
    for volume in pod.spec.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"{pod.where}: volume {volume['name']} is a hostPath")
    wants_token = pod.role == "head" and bool(cluster_spec(pod.resource).get("enableInTreeAutoscaling"))
    if pod.spec.get("automountServiceAccountToken") is not wants_token:
        problems.append(
            f"{pod.where}: automountServiceAccountToken must be {str(wants_token).lower()}"
            " (only a head with the autoscaler talks to the Kubernetes API)"
        )
    return problems


def container_problems(c: Container) -> list[str]:
    sc = c.spec.get("securityContext") or {}
    caps = sc.get("capabilities") or {}
    problems = []
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation must be false")
    if sc.get("privileged"):
        problems.append("privileged must not be set")
    if "ALL" not in caps.get("drop", []) or caps.get("add"):
        problems.append("capabilities must drop ALL and add none")
    if sc.get("runAsNonRoot") is not True or sc.get("runAsUser") != RAY_UID:
        problems.append(f"must run as non-root user {RAY_UID}")
    if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("seccompProfile must be RuntimeDefault")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem must be true")
    # Where Ray and the libraries write: emptyDir volumes of this pod.
    empty_dirs = {v["name"] for v in c.pod.spec.get("volumes", []) if "emptyDir" in v}
    empty_dirs.add("ray-logs") if c.spec["name"] == "autoscaler" else None  # KubeRay makes it
    mounted = {m["mountPath"]: m["name"] for m in c.spec.get("volumeMounts", [])}
    needed = ["/tmp"] if c.pod.role == "submitter" else ["/tmp", "/tmp/ray"]
    for path in needed:
        if mounted.get(path) not in empty_dirs:
            problems.append(f"needs an emptyDir volume mounted at {path} (read-only root filesystem)")
    return [f"{c.where}: {p}" for p in problems]


def hardening_problems(docs: list[tuple[Path, dict[str, Any]]] | None = None) -> list[str]:
    problems: list[str] = []
    for pod in all_pods(docs):
        problems += pod_problems(pod)
        for c in containers_of(pod):
            problems += container_problems(c)
    return problems


def test_every_pod_kuberay_creates_is_found() -> None:
    pods = all_pods()
    kinds = {(p.resource["kind"], p.role) for p in pods}
    assert {("RayCluster", "head"), ("RayJob", "submitter"), ("RayService", "worker")} <= kinds, kinds
    assert sum(1 for p in pods for c in containers_of(p) if c.spec["name"] == "autoscaler") == len(
        [d for d in _ray_resources() if cluster_spec(d).get("enableInTreeAutoscaling")]
    )


def test_every_pod_and_container_is_hardened() -> None:
    assert hardening_problems() == []


def test_hardening_rules_refuse_a_weakened_container() -> None:
    docs = _docs()
    broken = copy.deepcopy(docs)
    raycluster = next(d for _, d in broken if d["kind"] == "RayCluster")
    worker = raycluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    ctr = worker["containers"][0]
    ctr["securityContext"]["allowPrivilegeEscalation"] = True
    del ctr["securityContext"]["capabilities"]
    ctr["volumeMounts"] = [m for m in ctr["volumeMounts"] if m["mountPath"] != "/tmp/ray"]
    worker["hostNetwork"] = True
    worker["automountServiceAccountToken"] = True
    raycluster["spec"]["autoscalerOptions"]["securityContext"]["readOnlyRootFilesystem"] = False
    job = next(d for _, d in broken if d["kind"] == "RayJob")
    del job["spec"]["submitterPodTemplate"]  # KubeRay's default submitter has no securityContext
    problems = " | ".join(hardening_problems(broken))
    for expected in (
        "cpu/ray-worker: allowPrivilegeEscalation",
        "cpu/ray-worker: capabilities",
        "cpu/ray-worker: needs an emptyDir volume mounted at /tmp/ray",
        "cpu: hostNetwork",
        "cpu: automountServiceAccountToken must be false",
        "headgroup/autoscaler: readOnlyRootFilesystem",
        "submitter: pod securityContext.runAsNonRoot",
    ):
        assert expected in problems, f"{expected!r} not found in {problems}"


# --------------------------------------------------------------------------------------------------
# NetworkPolicy: a strict schema of the fields used, and an evaluator with Kubernetes' semantics


_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_PEER = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "podSelector": _SELECTOR,
        "namespaceSelector": _SELECTOR,
        "ipBlock": {
            "type": "object",
            "additionalProperties": False,
            "required": ["cidr"],
            "properties": {
                "cidr": {"type": "string"},
                "except": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
}
_PORTS = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
            "port": {"type": ["integer", "string"]},
            "endPort": {"type": "integer"},
        },
    },
}
NETWORK_POLICY_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "networking.k8s.io/v1"},
        "kind": {"const": "NetworkPolicy"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["podSelector"],
            "properties": {
                "podSelector": _SELECTOR,
                "policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}},
                "ingress": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"from": {"type": "array", "items": _PEER}, "ports": _PORTS},
                    },
                },
                "egress": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"to": {"type": "array", "items": _PEER}, "ports": _PORTS},
                    },
                },
            },
        },
    },
}


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod (labels, namespace labels) or an address outside the cluster."""

    labels: tuple[tuple[str, str], ...] = ()
    namespace: tuple[tuple[str, str], ...] = (("kubernetes.io/metadata.name", NAMESPACE),)
    ip: str | None = None

    @staticmethod
    def pod(labels: dict[str, str], namespace: str = NAMESPACE, **ns_labels: str) -> Peer:
        ns = {"kubernetes.io/metadata.name": namespace, **ns_labels}
        return Peer(tuple(sorted(labels.items())), tuple(sorted(ns.items())))

    @staticmethod
    def address(ip: str) -> Peer:
        return Peer((), (), ip)

    @property
    def is_pod(self) -> bool:
        return self.ip is None

    @property
    def ns_name(self) -> str | None:
        return dict(self.namespace).get("kubernetes.io/metadata.name")


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(rule_peer: dict[str, Any], peer: Peer) -> bool:
    if "ipBlock" in rule_peer:
        if peer.is_pod or peer.ip is None:
            return False  # pod IPs are ephemeral; these policies never address pods by IP
        ip = ipaddress.ip_address(peer.ip)
        block = rule_peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if not peer.is_pod:
        return False
    if "namespaceSelector" in rule_peer:
        ns_ok = selects(rule_peer["namespaceSelector"], dict(peer.namespace))
    else:
        ns_ok = peer.ns_name == NAMESPACE  # a bare podSelector means the policy's own namespace
    pod_ok = selects(rule_peer.get("podSelector", {}), dict(peer.labels))
    return ns_ok and pod_ok


def _port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        lo = int(p["port"])
        if lo <= port <= int(p.get("endPort", lo)):
            return True
    return False


def _policy_types(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def _direction_allowed(
    policies: list[dict[str, Any]], pod: Peer, other: Peer, port: int, protocol: str, direction: str
) -> bool:
    """Kubernetes' rule: open unless a policy of this type selects the pod; then some rule must allow."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    if not pod.is_pod:
        return True  # an address outside the cluster has no policies
    isolating = [
        p
        for p in policies
        if direction in _policy_types(p)
        and pod.ns_name == NAMESPACE
        and selects(p["spec"]["podSelector"], dict(pod.labels))
    ]
    if not isolating:
        return True
    for policy in isolating:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(rp, other) for rp in peers)) and _port_matches(
                rule.get("ports"), port, protocol
            ):
                return True
    return False


def connects(policies: list[dict[str, Any]], src: Peer, dst: Peer, port: int, protocol: str = "TCP") -> bool:
    return _direction_allowed(policies, src, dst, port, protocol, "Egress") and _direction_allowed(
        policies, dst, src, port, protocol, "Ingress"
    )


@cache
def _policy_tuple() -> tuple[dict[str, Any], ...]:
    return tuple(_of_kind("NetworkPolicy"))


def _policies() -> list[dict[str, Any]]:
    return list(_policy_tuple())


def _pod(resource_name: str, role: str, group: str | None = None) -> Peer:
    for pod in all_pods():
        if (
            pod.resource["metadata"]["name"] == resource_name
            and pod.role == role
            and (group is None or pod.labels.get("ray.io/group") == group)
        ):
            return Peer.pod(pod.labels)
    raise AssertionError(f"no {role} pod of {resource_name}")


CLUSTERS = [d["metadata"]["name"] for d in _ray_resources()]
KUBE_DNS = Peer.pod({"k8s-app": "kube-dns"}, "kube-system")
OPERATOR = Peer.pod({"app.kubernetes.io/name": "kuberay-operator"}, "kuberay-system")
S3 = Peer.address("52.92.16.10")
IMDS = Peer.address("169.254.169.254")


def test_network_policies_are_well_formed() -> None:
    policies = _policies()
    assert policies, f"no NetworkPolicy in {KUBERAY_DIR}"
    for policy in policies:
        errors = list(jsonschema.Draft7Validator(NETWORK_POLICY_SCHEMA).iter_errors(policy))
        assert not errors, f"{policy['metadata']['name']}: " + "; ".join(e.message for e in errors)


def test_schema_refuses_a_misspelled_policy_field() -> None:
    policy = copy.deepcopy(_policies()[1])
    policy["spec"]["ingress"][0]["form"] = policy["spec"]["ingress"][0].pop("from")
    assert list(jsonschema.Draft7Validator(NETWORK_POLICY_SCHEMA).iter_errors(policy))


def test_every_pod_is_isolated_both_ways() -> None:
    for pod in all_pods():
        peer = Peer.pod(pod.labels)
        for direction in ("Ingress", "Egress"):
            assert not _direction_allowed(_policies(), peer, Peer.pod({"x": "y"}), 9, "TCP", direction), (
                f"{pod.where}: not isolated for {direction}; an unlabelled pod may connect"
            )


@pytest.mark.parametrize("name", CLUSTERS)
def test_pods_of_one_cluster_reach_each_other_on_any_port(name: str) -> None:
    head, worker = _pod(name, "head"), _pod(name, "worker")
    for src, dst in ((worker, head), (head, worker), (worker, worker)):
        for port in (6379, 8265, 10001, 52365, 8076, 10002, 23456, 45000):
            assert connects(_policies(), src, dst, port), f"{name}: {src.labels} -> port {port} blocked"


@pytest.mark.parametrize("name", CLUSTERS)
def test_other_clusters_reach_nothing(name: str) -> None:
    for other in CLUSTERS:
        if other == name:
            continue
        for role in ("head", "worker"):
            for port in (6379, 8265, 8000, 10001, 23456):
                assert not connects(_policies(), _pod(other, "worker"), _pod(name, role), port), (
                    f"a worker of {other} reaches the {role} of {name} on {port}"
                )


@pytest.mark.parametrize("name", CLUSTERS)
def test_only_labelled_clients_reach_the_jobs_api(name: str) -> None:
    head, worker = _pod(name, "head"), _pod(name, "worker")
    client = Peer.pod({"raymlops.io/ray-client": name})
    client_ns = Peer.pod({"app": "notebook"}, "data-science", **{"raymlops.io/ray-client": name})
    stranger = Peer.pod({"app": "web"})
    for src in (client, client_ns):
        assert connects(_policies(), src, head, 8265)
        for port in (6379, 8000, 52365):
            assert not connects(_policies(), src, head, port), f"a client reaches {name}'s head on {port}"
        assert not connects(_policies(), src, worker, 10002)
    for src in (
        stranger,
        Peer.pod({"raymlops.io/ray-client": "someone-else"}),
        Peer.pod({"x": "y"}, "other"),
    ):
        assert not connects(_policies(), src, head, 8265), f"{src} reaches {name}'s jobs API unlabelled"


@pytest.mark.parametrize("name", CLUSTERS)
def test_the_kuberay_operator_reaches_the_head_only_where_it_must(name: str) -> None:
    kind = next(d["kind"] for d in _ray_resources() if d["metadata"]["name"] == name)
    # RayJob and RayService need the operator to call the dashboard (submit, status, Serve apps).
    assert connects(_policies(), OPERATOR, _pod(name, "head"), 8265) is (kind != "RayCluster")
    assert not connects(_policies(), OPERATOR, _pod(name, "head"), 6379)
    impostor = Peer.pod({"app.kubernetes.io/name": "kuberay-operator"}, "default")
    assert not connects(_policies(), impostor, _pod(name, "head"), 8265)


def test_model_clients_reach_serving_on_8000_and_nothing_else() -> None:
    model_client = Peer.pod({"raymlops.io/model-client": "true"})
    model_ns = Peer.pod({"app": "shop"}, "shop", **{"raymlops.io/model-client": "true"})
    worker, head = _pod("raymlops-serve", "worker"), _pod("raymlops-serve", "head")
    for src in (model_client, model_ns):
        assert connects(_policies(), src, worker, 8000)
        assert not connects(_policies(), src, head, 8265), "model clients must not reach the dashboard"
        assert not connects(_policies(), src, worker, 6379)
        for name in CLUSTERS:
            if name != "raymlops-serve":
                assert not connects(_policies(), src, _pod(name, "worker"), 8000)
    assert not connects(_policies(), Peer.pod({"app": "web"}), worker, 8000)


@pytest.mark.parametrize("name", CLUSTERS)
def test_ray_pods_resolve_names_and_reach_object_storage_but_not_node_credentials(name: str) -> None:
    for role in ("head", "worker"):
        pod = _pod(name, role)
        assert connects(_policies(), pod, KUBE_DNS, 53, "UDP") and connects(_policies(), pod, KUBE_DNS, 53)
        assert connects(_policies(), pod, S3, 443)
        assert not connects(_policies(), pod, S3, 80)
        for port in (80, 443):
            assert not connects(_policies(), pod, IMDS, port), "the node's instance credentials are reachable"
        assert not connects(_policies(), pod, Peer.pod({"app": "db"}), 5432)


def test_job_submitters_reach_their_own_jobs_api_only() -> None:
    for job in _of_kind("RayJob"):
        name = job["metadata"]["name"]
        submitter = _pod(name, "submitter")
        assert connects(_policies(), submitter, _pod(name, "head"), 8265), f"{name}: the submitter is cut off"
        assert connects(_policies(), submitter, KUBE_DNS, 53, "UDP")
        assert not connects(_policies(), submitter, _pod(name, "head"), 6379)
        assert not connects(_policies(), submitter, S3, 443)
        for other in CLUSTERS:
            if other != name:
                assert not connects(_policies(), submitter, _pod(other, "head"), 8265)


def test_no_policy_opens_an_ingress_to_everyone() -> None:
    for policy in _policies():
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            assert peers, f"{policy['metadata']['name']}: an ingress rule without `from` admits everyone"
            for peer in peers:
                assert "ipBlock" not in peer, f"{policy['metadata']['name']}: ingress by address"
                assert peer.get("podSelector", {}) or peer.get("namespaceSelector", {}), (
                    f"{policy['metadata']['name']}: an empty selector admits every pod"
                )


def test_evaluator_semantics() -> None:
    deny = {"spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    allow = {
        "spec": {
            "podSelector": {"matchLabels": {"a": "1"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"b": "1"}}}], "ports": [{"port": 80}]}],
        }
    }
    a, b, c = Peer.pod({"a": "1"}), Peer.pod({"b": "1"}), Peer.pod({"c": "1"})
    assert connects([], c, a, 80)  # nothing selects a: open
    assert not connects([deny], b, a, 80)
    assert connects([deny, allow], b, a, 80) and not connects([deny, allow], b, a, 81)
    assert not connects([deny, allow], c, a, 80)
    assert not connects(
        [allow], Peer.pod({"b": "1"}, "elsewhere"), a, 80
    )  # a bare podSelector is same-namespace
    assert selects({"matchExpressions": [{"key": "k", "operator": "Exists"}]}, {"k": ""})
    assert not selects({"matchExpressions": [{"key": "k", "operator": "In", "values": ["x"]}]}, {})


# --------------------------------------------------------------------------------------------------
# ServiceAccounts and cloud roles


def _service_accounts() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _of_kind("ServiceAccount")}


def _role_name(account: dict[str, Any]) -> str:
    arn = account["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn", "")
    m = re.fullmatch(r"arn:aws:iam::\d{12}:role/([\w+=,.@-]+)", arn)
    assert m, f"{account['metadata']['name']}: no IRSA role ARN annotation (got {arn!r})"
    return m.group(1)


def _policy_statements(role: str) -> list[dict[str, Any]]:
    path = IAM_DIR / f"{role}.json"
    assert path.is_file(), f"role {role} has no policy file {path}"
    statements = json.loads(path.read_text())["Statement"]
    return [s for s in statements if s.get("Effect") == "Allow"]


def _as_list(value: Any) -> list[str]:
    return value if isinstance(value, list) else [value]


def writable_prefixes(role: str) -> set[str]:
    """s3://bucket/prefix for every resource the role may write to."""
    out = set()
    for s in _policy_statements(role):
        if WRITE_ACTIONS & set(_as_list(s["Action"])):
            for resource in _as_list(s["Resource"]):
                out.add("s3://" + resource.removeprefix("arn:aws:s3:::").rstrip("*"))
    return out


def account_problems(docs: list[tuple[Path, dict[str, Any]]] | None = None) -> list[str]:
    accounts = {d["metadata"]["name"]: d for d in _of_kind("ServiceAccount", docs)}
    problems: list[str] = []
    used: dict[str, set[str]] = {}
    for doc in _ray_resources(docs):
        names = {p.spec.get("serviceAccountName") for p in pods_of(doc) if p.role != "submitter"}
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if len(names) != 1 or None in names:
            problems.append(f"{where}: head and workers must run as one named ServiceAccount, got {names}")
            continue
        name = names.pop()
        used.setdefault(purpose(doc), set()).add(name)
        access = (
            accounts.get(name, {}).get("metadata", {}).get("annotations", {}).get("raymlops.io/store-access")
        )
        if access != STORE_ACCESS[purpose(doc)]:
            problems.append(f"{where} ({purpose(doc)}) runs as {name}, whose store access is {access!r}")
    for kind, names in used.items():
        if len(names) != 1:
            problems.append(f"{kind} clusters run as several accounts: {sorted(names)}")
    if len(used) == 3 and len({n for names in used.values() for n in names}) != 3:
        problems.append(f"training, scoring and serving must not share ServiceAccounts: {used}")
    roles = {name: _role_name(acc) for name, acc in accounts.items()}
    if len(set(roles.values())) != len(roles):
        problems.append(f"ServiceAccounts share a cloud role: {roles}")
    return problems


def test_training_scoring_and_serving_have_their_own_accounts() -> None:
    assert account_problems() == []


def test_serving_role_is_read_only_by_name_annotation_and_policy() -> None:
    serve = _service_accounts()["raymlops-serve"]
    role = _role_name(serve)
    assert "readonly" in role and serve["metadata"]["annotations"]["raymlops.io/store-access"] == "read-only"
    for statement in _policy_statements(role):
        actions = set(_as_list(statement["Action"]))
        assert actions <= READ_ACTIONS, f"{role} grants {sorted(actions - READ_ACTIONS)}"


def test_scoring_role_writes_only_under_the_scores_prefix() -> None:
    role = _role_name(_service_accounts()["raymlops-score"])
    assert writable_prefixes(role) == {"s3://raymlops-models/scores/"}
    for job in _of_kind("RayJob"):
        if purpose(job) != "score":
            continue
        argv = shlex.split(job["spec"]["entrypoint"])
        output, store = argv[argv.index("--output") + 1], argv[argv.index("--store") + 1]
        assert any(output.startswith(p) for p in writable_prefixes(role)), (
            f"{output} is not writable for {role}"
        )
        assert not any(
            (store + "/").startswith(p) or p.startswith(store + "/") for p in writable_prefixes(role)
        )


def test_training_role_writes_the_store_and_tune_results() -> None:
    role = _role_name(_service_accounts()["raymlops-train"])
    prefixes = writable_prefixes(role)
    for doc in _ray_resources():
        if purpose(doc) == "train":
            env = {
                e["name"]: e.get("value")
                for e in cluster_spec(doc)["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
            }
            assert any((env["RAYMLOPS_STORE"] + "/").startswith(p) for p in prefixes), env["RAYMLOPS_STORE"]
    assert "s3://raymlops-models/ray-results/" in prefixes


def test_account_rules_refuse_serving_with_the_training_role() -> None:
    docs = copy.deepcopy(_docs())
    service = next(d for _, d in docs if d["kind"] == "RayService")
    for group in [
        service["spec"]["rayClusterConfig"]["headGroupSpec"],
        *service["spec"]["rayClusterConfig"]["workerGroupSpecs"],
    ]:
        group["template"]["spec"]["serviceAccountName"] = "raymlops-train"
    problems = " | ".join(account_problems(docs))
    assert "RayService/raymlops-serve (serve) runs as raymlops-train" in problems, problems
    assert "train clusters run as several accounts" not in problems
    split = copy.deepcopy(_docs())
    service = next(d for _, d in split if d["kind"] == "RayService")
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["serviceAccountName"] = "x"
    assert any("one named ServiceAccount" in p for p in account_problems(split))


# --------------------------------------------------------------------------------------------------
# Secrets: tokens and the serving API key


def _token_secrets(docs: list[tuple[Path, dict[str, Any]]] | None = None) -> dict[str, str | None]:
    return {
        f"{d['kind']}/{d['metadata']['name']}": (cluster_spec(d).get("authOptions") or {}).get("secretName")
        for d in _ray_resources(docs)
    }


def token_problems(docs: list[tuple[Path, dict[str, Any]]] | None = None) -> list[str]:
    secrets = _token_secrets(docs)
    problems = [f"{w}: authOptions.secretName is not set" for w, s in secrets.items() if not s]
    names = [s for s in secrets.values() if s]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(
            f"token Secret {name} is shared by {sorted(w for w, s in secrets.items() if s == name)}"
        )
    return problems


def api_key_problems(docs: list[tuple[Path, dict[str, Any]]] | None = None) -> list[str]:
    problems: list[str] = []
    tokens = {s for s in _token_secrets(docs).values() if s}
    for doc in _of_kind("RayService", docs):
        serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
        host = (serve_config.get("http_options") or {}).get("host", "127.0.0.1")
        if "RAYMLOPS_API_KEY" in doc["spec"]["serveConfigV2"]:
            problems.append("serveConfigV2 must not carry RAYMLOPS_API_KEY (it is not a Secret)")
        for pod in pods_of(doc):
            for c in pod.spec.get("containers", []):
                env = {e["name"]: e for e in c.get("env", [])}
                ref = (env.get("RAYMLOPS_API_KEY", {}).get("valueFrom") or {}).get("secretKeyRef") or {}
                where = f"{pod.where}/{c['name']}"
                if host in LOOPBACK:
                    continue
                if not (ref.get("name") and ref.get("key")) or "value" in env.get("RAYMLOPS_API_KEY", {}):
                    problems.append(f"{where}: Serve binds {host} but RAYMLOPS_API_KEY is not from a Secret")
                elif ref.get("optional"):
                    problems.append(f"{where}: the API key Secret must not be optional")
                elif ref["name"] in tokens:
                    problems.append(f"{where}: the API key must not be a Ray token Secret")
    return problems


def test_each_cluster_has_its_own_token_secret() -> None:
    assert len(_token_secrets()) >= 4
    assert token_problems() == []


def test_every_serve_capable_container_gets_the_api_key_from_a_secret() -> None:
    services = _of_kind("RayService")
    assert services and all(
        yaml.safe_load(s["spec"]["serveConfigV2"])["http_options"]["host"] == "0.0.0.0" for s in services
    )
    assert api_key_problems() == []


def test_no_other_cluster_holds_the_api_key() -> None:
    for doc in _ray_resources():
        if doc["kind"] == "RayService":
            continue
        for pod in pods_of(doc):
            for c in pod.spec.get("containers", []):
                assert "RAYMLOPS_API_KEY" not in {e["name"] for e in c.get("env", [])}, f"{pod.where}"


def test_secret_rules_refuse_a_shared_token_and_a_missing_key() -> None:
    docs = copy.deepcopy(_docs())
    job = next(d for _, d in docs if d["kind"] == "RayJob")
    job["spec"]["rayClusterSpec"]["authOptions"]["secretName"] = "raymlops-serve-ray-token"
    assert any("shared by" in p and job["metadata"]["name"] in p for p in token_problems(docs))
    service = next(d for _, d in docs if d["kind"] == "RayService")
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    workers.append(copy.deepcopy(workers[0]))
    workers[-1]["groupName"] = "cpu-large"
    env = workers[-1]["template"]["spec"]["containers"][0]["env"]
    env[:] = [e for e in env if e["name"] != "RAYMLOPS_API_KEY"]
    head_env = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "env"
    ]
    next(e for e in head_env if e["name"] == "RAYMLOPS_API_KEY")["valueFrom"]["secretKeyRef"]["optional"] = (
        True
    )
    problems = " | ".join(api_key_problems(docs))
    assert "cpu-large/ray-worker: Serve binds 0.0.0.0" in problems and "must not be optional" in problems, (
        problems
    )


# --- create-secrets.sh makes exactly these, with fresh values kept off command lines ---------------


def _scripted_secrets() -> dict[str, tuple[str, str]]:
    """NAME -> (KEY, KIND) for every `create_secret NAME KEY KIND` line of the script."""
    found = re.findall(r"^create_secret (\S+) (\S+) (\S+)", CREATE_SECRETS.read_text(), re.MULTILINE)
    return {name: (key, kind) for name, key, kind in found}


def _referenced_secrets() -> dict[str, str]:
    """NAME -> KEY of every Secret the manifests read."""
    out = {s: "auth_token" for s in _token_secrets().values() if s}
    for doc in _ray_resources():
        for pod in pods_of(doc):
            for c in pod.spec.get("containers", []):
                for e in c.get("env", []):
                    ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        out[ref["name"]] = ref["key"]
    return out


def test_create_secrets_makes_every_secret_the_manifests_read() -> None:
    scripted = {name: key for name, (key, _) in _scripted_secrets().items()}
    assert scripted == _referenced_secrets()


_STUB_KUBECTL = """#!/usr/bin/env bash
# Records each call; `get` answers from $STATE/existing; `create` keeps a copy of the --from-file file.
printf '%s\\n' "$*" >> "$STATE/calls"
args=("$@")
[[ ${args[0]} == --namespace ]] && args=("${args[@]:2}")
case "${args[0]} ${args[1]}" in
  "get secret") grep -qx "${args[2]}" "$STATE/existing" 2>/dev/null ;;
  "create secret")
    for a in "${args[@]}"; do
      if [[ $a == --from-file=* ]]; then
        spec=${a#--from-file=}; file=${spec#*=}
        stat -c %a "$file" > "$STATE/${args[3]}.mode"
        cp "$file" "$STATE/${args[3]}.value"
        echo "$file" > "$STATE/${args[3]}.path"
      fi
    done ;;
  "label secret") ;;
  *) exit 9 ;;
esac
"""


def _run_create_secrets(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    stub = tmp_path / "kubectl"
    stub.write_text(_STUB_KUBECTL)
    stub.chmod(0o755)
    env = {**os.environ, "KUBECTL": str(stub), "PYTHON": sys.executable, "STATE": str(tmp_path)}
    return subprocess.run(
        ["bash", str(CREATE_SECRETS), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_create_secrets_writes_fresh_private_values_off_the_command_line(tmp_path: Path) -> None:
    out = _run_create_secrets(tmp_path, "-n", "ml")
    assert out.returncode == 0, out.stderr
    calls = (tmp_path / "calls").read_text()
    values = {}
    for name, (_, kind) in _scripted_secrets().items():
        value = (tmp_path / f"{name}.value").read_text()
        values[name] = value
        assert (tmp_path / f"{name}.mode").read_text().strip() == "600", f"{name}: value file not private"
        assert not Path((tmp_path / f"{name}.path").read_text().strip()).exists(), "value file left behind"
        if kind == "hex":
            assert re.fullmatch(r"[0-9a-f]{64}", value), f"{name}: not a 256-bit hex token"
        else:
            assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", value), f"{name}: not a 256-bit URL-safe key"
        assert value not in calls, f"{name}: the value appeared on a kubectl command line"
        assert f"--namespace ml create secret generic {name} " in calls
    assert len(set(values.values())) == len(values), "two Secrets got the same value"


def test_create_secrets_keeps_existing_secrets(tmp_path: Path) -> None:
    (tmp_path / "existing").write_text("\n".join(_scripted_secrets()) + "\n")
    out = _run_create_secrets(tmp_path)
    assert out.returncode == 0, out.stderr
    assert "create secret" not in (tmp_path / "calls").read_text()
    assert out.stderr.count("exists, kept") == len(_scripted_secrets())


def test_secret_files_stay_out_of_the_repository() -> None:
    assert not _of_kind("Secret"), "Secrets (tokens, keys) are created by create-secrets.sh, never committed"
    assert stat.S_IMODE(CREATE_SECRETS.stat().st_mode) & 0o111, "create-secrets.sh must be executable"
