"""The container image and everything that names it agree, checked without a Docker engine.

One Ray version runs everywhere: the lower bound of ``ray[...]`` in ``pyproject.toml``, the Ray this
test process imports, ``RAY_VERSION`` in the ``Dockerfile`` (its ``FROM rayproject/ray:<tag>``), the
tag of every image the KubeRay manifests and the ``ray up`` config run, and every ``rayVersion``. A
cluster whose image carries another Ray than its ``rayVersion`` says fails in ways far from the cause
(KubeRay picks features by ``rayVersion``; Ray refuses to join nodes of different versions), so the
drift must fail here. The same holds for the Python of the image against the project's, for the
extras the image installs against those ``pyproject.toml`` defines, and for the files the build
copies against ``.dockerignore``.

Each check is a function returning a list of problems; each also runs against a copy broken on
purpose, to show it refuses what it should.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
KUBERAY_DIR = REPO / "cluster" / "kuberay"
LAUNCHER_DIR = REPO / "cluster" / "launcher"
IMAGE_REPOSITORY = "ghcr.io/raymlops/raymlops"
BASE_REPOSITORY = "rayproject/ray"
# Extras that hold tools for working on raymlops, not for running it: the image leaves them out.
TOOLING_EXTRAS = {"dev", "test", "tests", "docs", "lint"}
IMAGE_UID, IMAGE_GID = 1000, 100  # the `ray` user and `users` group of rayproject/ray


# --------------------------------------------------------------------------------------------------
# reading the Dockerfile


@dataclass
class Stage:
    base: str  # the FROM image, ARGs substituted
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Dockerfile:
    args: dict[str, str]  # global ARG defaults (before the first FROM)
    stages: list[Stage]

    def final_arg(self, name: str) -> str | None:
        """The default of an ARG declared in the final stage (or inherited from a global one)."""
        value = None
        for op, rest in self.stages[-1].instructions:
            if op == "ARG":
                key, _, default = rest.partition("=")
                if key.strip() == name:
                    value = _unquote(default) if default else self.args.get(name)
        return value


def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" else text


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        op, _, rest = full.partition(" ")
        out.append((op.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def _substitute(text: str, values: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"${name} has no default"
        return values[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", one, text)


def parse_dockerfile(text: str) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for op, rest in _instructions(text):
        if op == "FROM":
            words = rest.split()
            flags = [w for w in words if w.startswith("--")]
            words = [w for w in words if not w.startswith("--")]
            assert not flags, f"FROM {rest}: no --platform or other flags expected"
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=_substitute(words[0], args), name=name))
        elif not stages:
            assert op == "ARG", f"only ARG may come before the first FROM, found {op}"
            key, _, default = rest.partition("=")
            args[key.strip()] = _unquote(default)
        else:
            stages[-1].instructions.append((op, rest))
    assert stages, "the Dockerfile has no FROM"
    return Dockerfile(args=args, stages=stages)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


# --------------------------------------------------------------------------------------------------
# what the project says


def pinned_ray(pyproject: dict[str, Any]) -> str:
    """The lower bound of the ``ray[...]`` requirement: the Ray the project is tested with."""
    for req in pyproject["project"]["dependencies"]:
        m = re.fullmatch(r"ray(\[[^\]]*\])?\s*>=\s*(\d+\.\d+\.\d+)(,.*)?", req.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError("pyproject.toml has no `ray[...]>=X.Y.Z` requirement")


def project_python_tag(pyproject: dict[str, Any]) -> str:
    """The project's Python (the version mypy checks it for) as Ray's image tags spell it: py311."""
    major, minor = str(pyproject["tool"]["mypy"]["python_version"]).split(".")
    return f"py{major}{minor}"


def expected_images(pyproject: dict[str, Any], ray_version: str) -> dict[str, str]:
    tag = f"{pyproject['project']['version']}-ray{ray_version}-{project_python_tag(pyproject)}"
    return {"cpu": f"{IMAGE_REPOSITORY}:{tag}", "gpu": f"{IMAGE_REPOSITORY}:{tag}-gpu"}


# --------------------------------------------------------------------------------------------------
# what the manifests and the launcher run


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(KUBERAY_DIR.glob("*.yaml")):
        for doc in _docs(path):
            spec = doc.get("spec", {})
            cluster = {
                "RayCluster": spec,
                "RayJob": spec.get("rayClusterSpec"),
                "RayService": spec.get("rayClusterConfig"),
            }.get(doc.get("kind", ""))
            if cluster is not None:
                out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", cluster))
    return out


def _pod_specs(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    groups = [("head", spec.get("headGroupSpec", {}))] + [
        (g.get("groupName", "?"), g) for g in spec.get("workerGroupSpecs", [])
    ]
    return [(name, g.get("template", {}).get("spec", {})) for name, g in groups]


def kuberay_images() -> list[tuple[str, str, bool]]:
    """(where, image, wants a GPU) for every container image the KubeRay manifests name."""
    out: list[tuple[str, str, bool]] = []
    for path in sorted(KUBERAY_DIR.glob("*.yaml")):
        for doc in _docs(path):
            where = f"{path.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            for pod_where, pod in _all_pods(doc):
                for c in pod.get("containers", []) + pod.get("initContainers", []):
                    limits = c.get("resources", {}).get("limits", {})
                    out.append((f"{where} {pod_where}/{c['name']}", c["image"], "nvidia.com/gpu" in limits))
            auto = (_cluster_of(doc) or {}).get("autoscalerOptions", {}) or {}
            if "image" in auto:
                out.append((f"{where} autoscaler", auto["image"], False))
    return out


def _cluster_of(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec", {})
    return {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayService": spec.get("rayClusterConfig"),
    }.get(doc.get("kind", ""))


def _all_pods(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    pods = _pod_specs(_cluster_of(doc) or {}) if _cluster_of(doc) is not None else []
    submitter = doc.get("spec", {}).get("submitterPodTemplate") if doc.get("kind") == "RayJob" else None
    if submitter:
        pods.append(("submitter", submitter.get("spec", {})))
    return pods


def launcher_images() -> list[tuple[str, str, bool]]:
    out: list[tuple[str, str, bool]] = []
    for path in sorted(LAUNCHER_DIR.glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        docker = config.get("docker") or {}
        for key in ("image", "head_image", "worker_image"):
            if key in docker:
                out.append((f"{path.name}:docker.{key}", docker[key], False))
        for name, node in config.get("available_node_types", {}).items():
            node_docker = node.get("docker") or {}
            gpu = bool(re.match(r"(g|p)\d", str(node.get("node_config", {}).get("InstanceType", ""))))
            if "worker_image" in node_docker:
                out.append((f"{path.name}:{name}.docker.worker_image", node_docker["worker_image"], gpu))
            elif gpu and name != config.get("head_node_type"):
                out.append((f"{path.name}:{name} (inherits docker.image)", docker.get("image", ""), True))
    return out


# --------------------------------------------------------------------------------------------------
# the checks


def ray_version_problems(
    pyproject: dict[str, Any], dockerfile: Dockerfile, installed: str, cluster_specs: list
) -> list[str]:
    """Every place that names the Ray version names the pinned one."""
    pinned = pinned_ray(pyproject)
    problems = []
    if installed != pinned:
        problems.append(f"Ray {installed} is installed, pyproject.toml pins ray>={pinned}")
    if dockerfile.args.get("RAY_VERSION") != pinned:
        problems.append(
            f"Dockerfile RAY_VERSION={dockerfile.args.get('RAY_VERSION')}, pyproject pins {pinned}"
        )
    for where, spec in cluster_specs:
        if str(spec.get("rayVersion")) != pinned:
            problems.append(f"{where}: rayVersion {spec.get('rayVersion')} != {pinned}")
    return problems


def base_image_problems(pyproject: dict[str, Any], dockerfile: Dockerfile) -> list[str]:
    """Every stage starts from Ray's image of the pinned Ray and the project's Python."""
    pinned, python_tag = pinned_ray(pyproject), project_python_tag(pyproject)
    problems = []
    if dockerfile.args.get("PYTHON_TAG") != python_tag:
        problems.append(
            f"Dockerfile PYTHON_TAG={dockerfile.args.get('PYTHON_TAG')}, the project's is {python_tag}"
        )
    want = f"{BASE_REPOSITORY}:{pinned}-{python_tag}"
    for stage in dockerfile.stages:
        if stage.base != want:
            problems.append(f"FROM {stage.base} (stage {stage.name or 'final'}): expected {want}")
    spec = pyproject["project"].get("requires-python", "")
    m = re.fullmatch(r">=\s*(\d+)\.(\d+)", spec.strip())
    if m and (int(python_tag[2]), int(python_tag[3:])) < (int(m.group(1)), int(m.group(2))):
        problems.append(f"Python {python_tag} does not satisfy requires-python {spec}")
    return problems


def image_reference_problems(pyproject: dict[str, Any], images: list[tuple[str, str, bool]]) -> list[str]:
    """Every image reference is the raymlops image of this version; GPU containers get the -gpu one."""
    expected = expected_images(pyproject, pinned_ray(pyproject))
    problems = []
    for where, image, gpu in images:
        want = expected["gpu" if gpu else "cpu"]
        if image != want:
            problems.append(f"{where}: image {image!r}, expected {want!r}")
    return problems


def extras_problems(pyproject: dict[str, Any], dockerfile: Dockerfile) -> list[str]:
    """The image installs every runtime extra of pyproject.toml, and only extras that exist."""
    defined = set(pyproject["project"].get("optional-dependencies", {}))
    installed = {e.strip() for e in (dockerfile.final_arg("EXTRAS") or "").split(",") if e.strip()}
    problems = [
        f"EXTRAS names {e!r}, which pyproject.toml does not define" for e in sorted(installed - defined)
    ]
    problems += [
        f"pyproject.toml defines the extra {e!r} but the image does not install it (add it to EXTRAS)"
        for e in sorted(defined - installed - TOOLING_EXTRAS)
    ]
    return problems


def user_problems(dockerfile: Dockerfile) -> list[str]:
    """No stage runs as root; the final one ends as the numeric non-root user the manifests expect."""
    problems = []
    for stage in dockerfile.stages:
        users = [rest for op, rest in stage.instructions if op == "USER"]
        if not users:
            problems.append(f"stage {stage.name or 'final'} sets no USER (relies on the base image's)")
        for user in users:
            if user.split(":")[0] in ("0", "root"):
                problems.append(f"stage {stage.name or 'final'}: USER {user} runs as root")
    final = [rest for op, rest in dockerfile.stages[-1].instructions if op == "USER"]
    if final and final[-1] != f"{IMAGE_UID}:{IMAGE_GID}":
        problems.append(f"the image ends as USER {final[-1]}, expected {IMAGE_UID}:{IMAGE_GID} (numeric)")
    return problems


def install_problems(dockerfile: Dockerfile) -> list[str]:
    """raymlops is installed without pip's cache, with Ray held at the tag's version, and checked."""
    runs = " ".join(rest for op, rest in dockerfile.stages[-1].instructions if op == "RUN")
    problems = []
    if "pip install --no-cache-dir" not in runs:
        problems.append("the final stage must `pip install --no-cache-dir` raymlops")
    if "ray==${RAY_VERSION}" not in runs or " -c " not in runs:
        problems.append("pip must be constrained to ray==${RAY_VERSION} so the install cannot swap Ray")
    if "ray.__version__ == '${RAY_VERSION}'" not in runs:
        problems.append("the build must fail unless the installed Ray is ${RAY_VERSION}")
    return problems


def _copies(dockerfile: Dockerfile) -> list[tuple[list[str], str, bool]]:
    """(sources, destination, from another stage) of every COPY/ADD."""
    out = []
    for stage in dockerfile.stages:
        for op, rest in stage.instructions:
            if op in ("COPY", "ADD"):
                words = shlex.split(rest)
                flags = [w for w in words if w.startswith("--")]
                paths = [w for w in words if not w.startswith("--")]
                out.append((paths[:-1], paths[-1], any(f.startswith("--from") for f in flags)))
    return out


def context_problems(dockerfile: Dockerfile, dockerignore: str) -> list[str]:
    """The build context holds what the Dockerfile copies and nothing else (no keys, no .env, no .git)."""
    problems = []
    rules = [r.strip() for r in dockerignore.splitlines() if r.strip() and not r.strip().startswith("#")]
    if not rules or rules[0] != "*":
        problems.append(
            ".dockerignore must start with `*` (exclude everything, then list what the build needs)"
        )
    included = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    sources = set()
    for paths, _, other_stage in _copies(dockerfile):
        if other_stage:
            continue
        for src in paths:
            sources.add(src.rstrip("/"))
            if not (REPO / src).exists():
                problems.append(f"COPY {src}: no such file or folder in the repository")
            if src in (".", "./") or "*" in src:
                problems.append(f"COPY {src}: copy named paths, not the whole context")
    problems += [f"{s} is copied but not re-included in .dockerignore" for s in sorted(sources - included)]
    problems += [f".dockerignore re-includes {s}, which no COPY uses" for s in sorted(included - sources)]
    for secret in ("**/.env", "**/*.pem", "**/*.key"):
        if secret not in rules:
            problems.append(f".dockerignore must exclude {secret} even inside included folders")
    return problems


# --------------------------------------------------------------------------------------------------
# tests


def test_one_ray_version_everywhere(pyproject: dict[str, Any], dockerfile: Dockerfile) -> None:
    import ray

    specs = _cluster_specs()
    assert len(specs) >= 4, "expected the RayCluster, two RayJobs and the RayService"
    assert ray_version_problems(pyproject, dockerfile, ray.__version__, specs) == []


def test_dockerfile_is_built_on_rays_image_of_the_projects_python(
    pyproject: dict[str, Any], dockerfile: Dockerfile
) -> None:
    assert base_image_problems(pyproject, dockerfile) == []
    assert dockerfile.args.get("VARIANT") == "", "the default build is the CPU image"


def test_manifests_and_launcher_run_the_image_of_this_version(pyproject: dict[str, Any]) -> None:
    images = kuberay_images() + launcher_images()
    assert any(gpu for _, _, gpu in kuberay_images()) and any(gpu for _, _, gpu in launcher_images())
    assert image_reference_problems(pyproject, images) == []


def test_the_documented_build_commands_make_the_tags_the_manifests_use(pyproject: dict[str, Any]) -> None:
    expected = expected_images(pyproject, pinned_ray(pyproject))
    for doc in (DOCKERFILE, REPO / "cluster" / "README.md"):
        text = doc.read_text()
        assert f"docker build -t {expected['cpu']} ." in text, f"{doc.name}: no CPU build command"
        assert "--build-arg VARIANT=-gpu" in text and expected["gpu"] in text, f"{doc.name}: no GPU build"
        assert f"docker push {expected['cpu']}" in text, f"{doc.name}: no push command"


def test_image_installs_the_extras_pyproject_defines(
    pyproject: dict[str, Any], dockerfile: Dockerfile
) -> None:
    assert extras_problems(pyproject, dockerfile) == []


def test_image_runs_as_the_non_root_ray_user(dockerfile: Dockerfile) -> None:
    assert user_problems(dockerfile) == []


def test_raymlops_install_keeps_rays_version(dockerfile: Dockerfile) -> None:
    assert install_problems(dockerfile) == []


def test_image_holds_the_job_entrypoints_and_pipelines(dockerfile: Dockerfile) -> None:
    final_copies = {dest.rstrip("/"): paths for paths, dest, _ in _copies(dockerfile)[-2:]}
    assert final_copies.get("/home/ray/raymlops/jobs") == ["jobs"], final_copies
    assert final_copies.get("/home/ray/raymlops/pipelines") == ["pipelines"], final_copies
    # The RayJobs run their entrypoint from there.
    for path in sorted(KUBERAY_DIR.glob("rayjob*.yaml")):
        for doc in _docs(path):
            if doc.get("kind") == "RayJob":
                script = next(a for a in shlex.split(doc["spec"]["entrypoint"]) if a.endswith(".py"))
                assert script.startswith("/home/ray/raymlops/jobs/"), script
                assert (REPO / "jobs" / Path(script).name).is_file(), script


def test_build_context_is_only_what_the_image_needs(dockerfile: Dockerfile) -> None:
    assert context_problems(dockerfile, DOCKERIGNORE.read_text()) == []


def test_writable_paths_the_image_points_at_are_under_tmp(dockerfile: Dockerfile) -> None:
    """The manifests run a read-only root filesystem with /tmp writable: caches must go there."""
    env = " ".join(rest for op, rest in dockerfile.stages[-1].instructions if op == "ENV")
    for var in ("RAYMLOPS_CACHE", "XDG_CACHE_HOME", "MPLCONFIGDIR", "KERAS_HOME"):
        m = re.search(rf"\b{var}=(\S+)", env)
        assert m and m.group(1).startswith("/tmp/"), f"{var} must point under /tmp, got {m and m.group(1)}"


# --- the checks have teeth -----------------------------------------------------------------------


def _broken(text: str, old: str, new: str) -> Dockerfile:
    assert old in text, old
    return parse_dockerfile(text.replace(old, new, 1))


def test_checks_refuse_a_dockerfile_on_another_ray_or_python(pyproject: dict[str, Any]) -> None:
    import ray

    text = DOCKERFILE.read_text()
    other_ray = _broken(text, "ARG RAY_VERSION=2.60.0", "ARG RAY_VERSION=2.59.0")
    assert any(
        "RAY_VERSION=2.59.0" in p for p in ray_version_problems(pyproject, other_ray, ray.__version__, [])
    )
    assert any("rayproject/ray:2.59.0" in p for p in base_image_problems(pyproject, other_ray))
    other_python = _broken(text, "ARG PYTHON_TAG=py311", "ARG PYTHON_TAG=py312")
    assert any("PYTHON_TAG=py312" in p for p in base_image_problems(pyproject, other_python))
    hard_coded = _broken(
        text, "FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}${VARIANT}\n", "FROM ubuntu:24.04\n"
    )
    assert any("ubuntu:24.04" in p for p in base_image_problems(pyproject, hard_coded))


def test_checks_refuse_a_manifest_on_another_ray(pyproject: dict[str, Any], dockerfile: Dockerfile) -> None:
    import ray

    where, spec = _cluster_specs()[0]
    spec = {**spec, "rayVersion": "2.59.0"}
    assert any(
        "2.59.0" in p for p in ray_version_problems(pyproject, dockerfile, ray.__version__, [(where, spec)])
    )
    images = [
        ("x", f"{IMAGE_REPOSITORY}:0.1.0-ray2.59.0-py311", False),
        ("y", expected_images(pyproject, pinned_ray(pyproject))["cpu"], True),
    ]
    problems = image_reference_problems(pyproject, images)
    assert len(problems) == 2 and "ray2.59.0" in problems[0] and "-gpu" in problems[1], problems


def test_checks_refuse_a_pin_that_moved_without_the_image(
    dockerfile: Dockerfile, pyproject: dict[str, Any]
) -> None:
    moved = {**pyproject, "project": {**pyproject["project"]}}
    moved["project"]["dependencies"] = [
        "ray[data,train,tune,serve]>=2.61.0" if d.startswith("ray[") else d
        for d in pyproject["project"]["dependencies"]
    ]
    problems = ray_version_problems(moved, dockerfile, "2.60.0", [])
    assert any("installed" in p for p in problems) and any("RAY_VERSION" in p for p in problems), problems


def test_checks_refuse_unknown_or_missing_extras(pyproject: dict[str, Any]) -> None:
    text = DOCKERFILE.read_text()
    assert 'ARG EXTRAS="mlflow"' in text
    unknown = _broken(text, 'ARG EXTRAS="mlflow"', 'ARG EXTRAS="nonexistent"')
    assert any("'nonexistent'" in p for p in extras_problems(pyproject, unknown))
    missing = _broken(text, 'ARG EXTRAS="mlflow"', 'ARG EXTRAS=""')
    assert any("'mlflow'" in p for p in extras_problems(pyproject, missing))
    assert extras_problems(pyproject, parse_dockerfile(text)) == []


def test_checks_refuse_root_and_a_wide_context() -> None:
    text = DOCKERFILE.read_text()
    rooted = parse_dockerfile(text + "\nUSER root\n")
    assert any("root" in p for p in user_problems(rooted))
    everything = _broken(
        text, "COPY --chown=1000:100 jobs /home/ray/raymlops/jobs", "COPY . /home/ray/raymlops"
    )
    problems = context_problems(everything, DOCKERIGNORE.read_text())
    assert any("whole context" in p for p in problems), problems
    assert any(".dockerignore must start" in p for p in context_problems(parse_dockerfile(text), "!jobs\n"))


def test_dockerfile_parser() -> None:
    parsed = parse_dockerfile(
        'ARG A=1\nARG B="x"\nFROM img:${A}-$B AS one\n# c\n'
        "RUN echo \\\n  # dropped\n  hi\nFROM img:${A}\nARG C=3\n"
    )
    assert [s.base for s in parsed.stages] == ["img:1-x", "img:1"]
    assert parsed.stages[0].name == "one" and parsed.stages[0].instructions == [("RUN", "echo  hi")]
    assert parsed.final_arg("C") == "3" and parsed.final_arg("A") is None
