"""End to end on a real multi-node Ray cluster on this machine (``cluster/local/up.sh``).

A head and two worker raylets start with token auth; ``raymlops submit pipelines/digits.yaml``
(the real command, in its own process) runs the demo there; the store must then hold a registered
version, ``raymlops jobs list/status/logs`` must show the job, training must have run on more
than one node, the jobs API and the CLI must refuse requests without the token, and ``down.sh``
must leave no process of the cluster behind.

The cluster gets its own folder (short, under /tmp: Ray's socket paths have a length limit) and
ports that are free right now, so it never meets another Ray instance on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
UP = REPO / "cluster" / "local" / "up.sh"
DOWN = REPO / "cluster" / "local" / "down.sh"
NUM_WORKERS = 2
# Training/Tune bookkeeping that runs wherever Ray puts it; it says nothing about training placement.
_BOOKKEEPING = {"JobSupervisor", "_StatsActor", "_AutoscalingCoordinatorActor", "AutoscalingRequester"}
_TRAINING = re.compile(r"trial|train|tree|fit|ImplicitFunc", re.IGNORECASE)


@dataclass
class Cluster:
    dir: Path
    env: dict[str, str]  # the environment a user of the cluster has after sourcing env.sh
    exports: dict[str, str]
    api: str
    gcs: str
    token: str
    store: Path


def _port_free(port: int) -> bool:
    for host in ("0.0.0.0", "127.0.0.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _pick_ports() -> dict[str, str]:
    """A set of ports no one listens on: GCS+client, dashboard, 10 per node, 200 worker ports per node."""
    nodes = NUM_WORKERS + 1
    for k in range(40):
        gcs, dashboard = 6390 + 50 * k, 8275 + k
        port_base = gcs + 10
        worker_base = 21000 + 700 * k
        wanted = [gcs, gcs + 9, dashboard, *range(port_base, port_base + 10 * nodes)]
        if all(_port_free(p) for p in wanted) and all(
            _port_free(p) for p in range(worker_base, worker_base + 200 * nodes, 7)
        ):
            return {
                "RAYMLOPS_GCS_PORT": str(gcs),
                "RAYMLOPS_DASHBOARD_PORT": str(dashboard),
                "RAYMLOPS_PORT_BASE": str(port_base),
                "RAYMLOPS_WORKER_PORT_BASE": str(worker_base),
            }
    pytest.skip("no free block of ports for a local cluster")


def _base_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH", "RAY_DASHBOARD", "RAYMLOPS_"))
    }
    env["RAYMLOPS_RAY"] = str(Path(sys.executable).parent / "ray")
    return env


def _cluster_processes(cluster_dir: Path) -> list[tuple[int, str]]:
    """Live processes of the cluster: its marker in their environ, or Ray processes holding its files."""
    marker = f"RAYMLOPS_LOCAL_CLUSTER_DIR={cluster_dir}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        proc = Path("/proc") / entry
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            mine = marker in (proc / "environ").read_bytes().split(b"\0")
            if not mine and (cmd.startswith("ray::") or "site-packages/ray/" in cmd):
                for fd in (proc / "fd").iterdir():
                    if os.readlink(fd).startswith(str(cluster_dir) + "/"):
                        mine = True
                        break
        except OSError:
            continue
        if mine:
            found.append((int(entry), cmd[:120]))
    return found


def _get(url: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
            return r.status, json.loads(body) if body else None
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def _state(cluster: Cluster, kind: str, job_id: str) -> list[dict[str, Any]]:
    url = (
        f"{cluster.api}/api/v0/{kind}?limit=10000&detail=true"
        f"&filter_keys=job_id&filter_predicates=%3D&filter_values={job_id}"
    )
    status, body = _get(url, cluster.token)
    assert status == 200, body
    return list(body["data"]["result"]["result"])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not sys.platform.startswith("linux") or shutil.which("bash") is None:
        pytest.skip("the local cluster scripts need Linux and bash")
    cluster_dir = Path(tempfile.mkdtemp(prefix="rmc-", dir="/tmp"))
    env = {**_base_env(), **_pick_ports(), "RAYMLOPS_CLUSTER_DIR": str(cluster_dir)}
    try:
        up = subprocess.run(["bash", str(UP)], env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as err:
        subprocess.run(["bash", str(DOWN), "--purge"], env=env, capture_output=True, timeout=120)
        pytest.fail(f"up.sh timed out: {err.stderr}")
    if up.returncode != 0:
        subprocess.run(["bash", str(DOWN), "--purge"], env=env, capture_output=True, timeout=120)
        pytest.fail(f"up.sh failed ({up.returncode}):\n{up.stderr}")
    exports = dict(re.findall(r"^export (\w+)=(.*)$", up.stdout, re.MULTILINE))
    user_env = {**_base_env(), **exports}
    try:
        yield Cluster(
            dir=cluster_dir,
            env=user_env,
            exports=exports,
            api=exports["RAY_API_SERVER_ADDRESS"],
            gcs=exports["RAY_ADDRESS"],
            token=Path(exports["RAY_AUTH_TOKEN_PATH"]).read_text().strip(),
            store=Path(exports["RAYMLOPS_STORE"]),
        )
    finally:
        subprocess.run(["bash", str(DOWN), "--purge"], env=env, capture_output=True, timeout=180)
        leftovers = _cluster_processes(cluster_dir)
        shutil.rmtree(cluster_dir, ignore_errors=True)
        assert not leftovers, f"processes left behind: {leftovers}"


def _raymlops_run_available() -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "raymlops.cli", "run", "--help"], capture_output=True, text=True, timeout=120
    )
    return proc.returncode == 0


def _tiny_pipeline(folder: Path, name: str, source: str, extra: dict[str, Any] | None = None) -> Path:
    """The digits pipeline at tiny settings: one forest trained by 2 workers, 2 Tune samples."""
    folder.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "name": name,
        "data": {"source": source, "target": "target"},
        "validation": {"forbid_constant_columns": False},
        "preprocess": [{"standard_scaler": {"columns": "numeric"}}],
        "models": [{"name": "rf", "kind": "random_forest", "workers": 2, "params": {"n_estimators": 20}}],
        "tune": {"num_samples": 2},
        "gate": {"min": {"accuracy": 0.5}},
        **(extra or {}),
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------------


def test_cluster_has_a_head_and_two_worker_nodes(cluster: Cluster) -> None:
    # `ray status` shows the autoscaler's view, which refreshes every few seconds: a node that the
    # GCS already lists alive (what up.sh waits for) can take a moment to appear there.
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "status", "--address", cluster.gcs],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        active = out.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
        seen = len(re.findall(r"^\s*1 node_[0-9a-f]+", active, re.MULTILINE))
        if seen == NUM_WORKERS + 1 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert seen == NUM_WORKERS + 1, out.stdout

    status, body = _get(f"{cluster.api}/api/v0/nodes?limit=100&detail=true", cluster.token)
    assert status == 200, body
    nodes = [n for n in body["data"]["result"]["result"] if n["state"] == "ALIVE"]
    assert len({n["node_id"] for n in nodes}) == NUM_WORKERS + 1
    assert sum(bool(n.get("is_head_node")) for n in nodes) == 1


def test_exports_are_what_a_user_needs(cluster: Cluster) -> None:
    assert cluster.exports["RAY_AUTH_MODE"] == "token"
    assert cluster.api.startswith("http://")
    assert re.fullmatch(r"[\w.]+:\d+", cluster.gcs), "RAY_ADDRESS is the GCS address ray.init() takes"
    token_file = Path(cluster.exports["RAY_AUTH_TOKEN_PATH"])
    assert token_file.stat().st_mode & 0o077 == 0, "the token file must be private"
    assert cluster.store.is_dir()
    assert (cluster.dir / "env.sh").read_text().strip().splitlines() == [
        f"export {k}={v}" for k, v in cluster.exports.items()
    ]


def test_jobs_api_refuses_requests_without_the_token(cluster: Cluster) -> None:
    status, _ = _get(f"{cluster.api}/api/jobs/", None)
    assert status == 401
    status, _ = _get(f"{cluster.api}/api/jobs/", "not-the-token")
    assert status == 403
    status, body = _get(f"{cluster.api}/api/jobs/", cluster.token)
    assert status == 200 and isinstance(body, list)

    # The library turns the refusal into one clear message (a fresh process without the token).
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    code = (
        "from raymlops.submit import list_jobs, SubmitError\n"
        "try:\n    list_jobs()\nexcept SubmitError as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "requires a token and none was sent (HTTP 401)" in out.stdout, out.stdout + out.stderr
    from raymlops.submit import SubmitError, list_jobs

    with pytest.raises(SubmitError, match="refused the token"):
        list_jobs(cluster.api, token="not-the-token")


def _cli(cluster: Cluster, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    """``raymlops ARGS`` in a fresh process with the environment a user of the cluster has."""
    return subprocess.run(
        [sys.executable, "-m", "raymlops.cli", *args],
        env=env if env is not None else cluster.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_raymlops_submit_digits_registers_a_version_trained_on_several_nodes(cluster: Cluster) -> None:
    """The documented command, as typed: `raymlops submit pipelines/digits.yaml --address ...`."""
    if not _raymlops_run_available():
        pytest.skip("`raymlops run` is not available yet")
    out = _cli(cluster, "submit", "pipelines/digits.yaml", "--address", cluster.api, "--json", timeout=1500)
    assert out.returncode == 0, out.stderr[-5000:]
    result = json.loads(out.stdout)  # --json: one object on stdout, the job's log on stderr
    assert result["status"] == "SUCCEEDED" and result["exit_code"] == 0
    assert "[raymlops] submitted job" in out.stderr and "over plain HTTP" not in out.stderr  # loopback
    summary = result["summary"]
    assert summary is not None and summary["pipeline"] == "digits", out.stderr[-3000:]
    version, job_id = summary["version"], result["job_id"]

    # The store the cluster shares ($RAYMLOPS_STORE from up.sh) holds the version, with the champion on it.
    version_dir = cluster.store / "models" / "digits" / str(version)
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["metrics"]["accuracy"] >= 0.9
    aliases = json.loads((cluster.store / "models" / "digits" / "aliases.json").read_text())
    assert str(aliases.get("champion")) == str(version)

    # `raymlops jobs list/status/logs` show the job (the address from $RAY_API_SERVER_ADDRESS).
    listed = _cli(cluster, "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert job_id in {j["submission_id"] for j in json.loads(listed.stdout)["jobs"]}
    status = _cli(cluster, "jobs", "status", job_id, "--json")
    assert status.returncode == 0, status.stderr
    details = json.loads(status.stdout)
    assert details["status"] == "SUCCEEDED" and details["metadata"]["raymlops.pipeline"] == "digits"
    logs = _cli(cluster, "jobs", "logs", job_id)
    assert logs.returncode == 0 and "RAYMLOPS_SUMMARY " in logs.stdout, logs.stderr

    # The driver ran as a Ray job on the cluster, and training ran on more than one node.
    ray_job_id = details["job_id"]
    actors = [a for a in _state(cluster, "actors", ray_job_id) if a["class_name"] not in _BOOKKEEPING]
    tasks = [t for t in _state(cluster, "tasks", ray_job_id) if _TRAINING.search(t["name"])]
    training_nodes = {a["node_id"] for a in actors if a.get("node_id")} | {
        t["node_id"] for t in tasks if t.get("node_id")
    }
    assert len(training_nodes) >= 2, f"training used {len(training_nodes)} node(s): {actors} {tasks}"


def test_the_cli_without_the_token_is_refused_clearly(cluster: Cluster) -> None:
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    before = json.loads(_cli(cluster, "jobs", "list", "--json").stdout)["jobs"]
    for args in (
        ("submit", "pipelines/digits.yaml", "--address", cluster.api),
        ("jobs", "list"),
        ("jobs", "status", "raymlops-nope"),
    ):
        out = _cli(cluster, *args, env=env)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        message = " ".join(out.stderr.split())
        assert "requires a token and none was sent (HTTP 401)" in message, (args, out.stderr)
        assert "RAY_AUTH_TOKEN_PATH" in message and "Traceback" not in out.stderr
    wrong = _cli(cluster, "jobs", "list", env={**env, "RAY_AUTH_TOKEN": "not-the-token"})
    assert wrong.returncode == 2 and "refused the token (HTTP 403)" in " ".join(wrong.stderr.split())
    after = json.loads(_cli(cluster, "jobs", "list", "--json").stdout)["jobs"]
    assert len(after) == len(before), "a refused submit must not start a job"


def test_local_data_travels_with_the_job_and_no_wait_returns_at_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    if not _raymlops_run_available():
        pytest.skip("`raymlops run` is not available yet")
    from sklearn.datasets import load_digits

    from raymlops.submit import job_status, submit

    # A CSV next to the pipeline, named by a relative path: only this machine has it.
    (tmp_path / "data").mkdir()
    load_digits(as_frame=True).frame.to_csv(tmp_path / "data" / "digits.csv", index=False)
    pipeline = _tiny_pipeline(
        tmp_path,
        "digits-csv",
        "data/digits.csv",
        {
            "models": [{"name": "rf", "kind": "random_forest", "workers": 2, "params": {"n_estimators": 10}}],
            "tune": {"num_samples": 1},
        },
    )
    started = time.monotonic()
    result = submit(pipeline, cluster.api, store=str(cluster.store), token=cluster.token, wait=False)
    assert result.exit_code == 0 and result.status == "PENDING"
    assert time.monotonic() - started < 60, "--no-wait must not wait for the job"
    deadline = time.monotonic() + 900
    status = "PENDING"
    while time.monotonic() < deadline:
        details = job_status(result.job_id, cluster.api, token=cluster.token)
        status = details["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    assert status == "SUCCEEDED", details.get("message")
    assert list((cluster.store / "models" / "digits-csv").glob("*/metadata.json"))


def test_a_failing_job_gives_exit_code_1(cluster: Cluster, tmp_path: Path) -> None:
    if not _raymlops_run_available():
        pytest.skip("`raymlops run` is not available yet")
    # Valid as a file, wrong for the data: the target column does not exist, so the run fails there.
    (tmp_path / "rows.csv").write_text("a,b\n" + "".join(f"{i},{i % 3}\n" for i in range(50)))
    pipeline = _tiny_pipeline(tmp_path, "broken", "rows.csv")
    out = _cli(cluster, "submit", str(pipeline), "--store", str(cluster.store), "--json", timeout=600)
    assert out.returncode == 1, out.stderr[-3000:]  # `raymlops submit` exits with the job's outcome
    assert json.loads(out.stdout)["status"] == "FAILED"
    assert not (cluster.store / "models" / "broken").exists()


def _scale_data(folder: Path, rows: int) -> str:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(rows, 8))
    label = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
    for i, part in enumerate(np.array_split(np.arange(rows), 8)):
        cols = {"id": part, "label": label[part], **{f"f{j}": X[part, j] for j in range(8)}}
        pq.write_table(pa.table(cols), folder / f"part-{i}.parquet")
    return str(folder)


def test_rows_are_read_and_trained_on_worker_nodes_and_the_driver_stays_flat(cluster: Cluster) -> None:
    """Issue 12: file rows go from the shared store to tasks on the worker nodes, not to the driver."""
    peaks = {}
    for rows in (40_000, 400_000):
        source = _scale_data(cluster.store.parent / f"scale-{rows}", rows)
        pipeline = _tiny_pipeline(
            cluster.store.parent / "pipelines",
            f"scale{rows}",
            source,
            {
                "data": {"source": source, "target": "label", "exclude": ["id"], "split": {"key": "id"}},
                "preprocess": [],
                "tune": {"num_samples": 1},
            },
        )
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "raymlops.cli",
                "run",
                str(pipeline),
                "--json",
                "--store",
                str(cluster.store),
            ],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout)
        assert summary["cluster"]["nodes"] == NUM_WORKERS + 1
        peaks[rows] = summary["cluster"]["driver_peak_rss_mb"]
    status, body = _get(f"{cluster.api}/api/v0/tasks?limit=10000&detail=true", cluster.token)
    assert status == 200, body
    status, nodes = _get(f"{cluster.api}/api/v0/nodes?limit=100&detail=true", cluster.token)
    head = {n["node_id"] for n in nodes["data"]["result"]["result"] if n.get("is_head_node")}
    readers = {t["node_id"] for t in body["data"]["result"]["result"] if "ReadParquet" in t.get("name", "")}
    trees = {
        t["node_id"]
        for t in body["data"]["result"]["result"]
        if "_build_trees" in t.get("name", "") or "_sampled_trees" in t.get("name", "")
    }
    assert readers - head, f"rows were read only on the head node: {readers}"
    assert trees - head, f"trees were built only on the head node: {trees}"
    # 10x the rows, the driver's peak memory about the same (statistics and bounded samples only)
    assert peaks[400_000] <= 1.2 * peaks[40_000] + 50, peaks


def test_down_stops_every_process_of_the_cluster(cluster: Cluster) -> None:
    # Runs last in this module: the fixture's own teardown then finds nothing to stop.
    assert _cluster_processes(cluster.dir), "the cluster's processes should be visible before down.sh"
    env = {**_base_env(), "RAYMLOPS_CLUSTER_DIR": str(cluster.dir)}
    out = subprocess.run(["bash", str(DOWN)], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert _cluster_processes(cluster.dir) == []
    gcs_port = int(cluster.gcs.rsplit(":", 1)[1])
    api_port = int(cluster.api.rsplit(":", 1)[1])
    assert _port_free(gcs_port) and _port_free(api_port), "the cluster's ports are still taken"
    assert not (cluster.dir / "env.sh").exists()
