"""Nothing left behind, and a console people read: the real CLI as a subprocess.

Each command runs with an environment variable of the test's own; every process of the Ray
instance the command starts (GCS, raylet, workers, Train controllers) inherits it, so after the
command has exited, any process still carrying it is a leftover.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
import yaml

from raymlops.cluster import marked_processes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc to find processes"),
]

ROOT = Path(__file__).parents[1]
TEST_MARK = "RAYMLOPS_TEST_PROCESS_MARK"
WORKER_NOISE = ("INFO:tensorflow", "PlacementGroupCleaner", "(RayTrainWorker", "max_concurrent_trials")


@dataclass
class Command:
    """A CLI process started by a test, its stdout and stderr collected as they come."""

    proc: subprocess.Popen[str]
    mark: str
    err_lines: list[str] = field(default_factory=list)
    out_lines: list[str] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def stderr(self) -> str:
        return "".join(self.err_lines)

    @property
    def out(self) -> str:
        return "".join(self.out_lines)

    def wait_for(self, text: str, timeout: float, *, stdout_too: bool = False) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr and not (stdout_too and text in self.out):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never showed (rc={self.proc.poll()}):\n{self.stderr}")
            time.sleep(0.2)

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        for reader in self.readers:  # the pipes are at their end once the process has exited
            reader.join(timeout=10)
        return rc

    def leftovers(self) -> list[str]:
        """What still runs with this command's mark, after a short wait for processes that are
        already on their way out."""
        deadline = time.monotonic() + 3
        while True:
            pids = marked_processes(TEST_MARK, self.mark)
            if not pids or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return [_cmdline(pid) for pid in pids]

    def kill(self) -> None:
        """SIGKILL the command and every process carrying its mark (a test that failed mid-way)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in marked_processes(TEST_MARK, self.mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


_STARTED: list[Command] = []


@pytest.fixture(autouse=True)
def _nothing_outlives_its_test():
    """A test that fails while its command runs (a timeout, an assertion) kills it, its Ray
    processes too: a 400-epoch run or a server left going would slow every later test."""
    yield
    while _STARTED:
        _STARTED.pop().kill()


def _cmdline(pid: int) -> str:
    try:
        return f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return f"{pid}: (gone)"


def start(args: list[str], tmp_path: Path) -> Command:
    mark = uuid.uuid4().hex
    env = {
        **os.environ,
        TEST_MARK: mark,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "RAYMLOPS_NUM_CPUS": "4",
        "RAYMLOPS_LOG_DIR": str(tmp_path / "logs"),
        "COLUMNS": "120",
    }
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "TF_CPP_MIN_LOG_LEVEL", "RAY_DEDUP_LOGS"):
        env.pop(key, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "raymlops.cli", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cmd = Command(proc, mark)
    _STARTED.append(cmd)

    def pump(stream: IO[str] | None, into: list[str]) -> None:
        assert stream is not None
        for line in stream:
            into.append(line)

    for stream, into in ((proc.stderr, cmd.err_lines), (proc.stdout, cmd.out_lines)):
        reader = threading.Thread(target=pump, args=(stream, into), daemon=True)
        reader.start()
        cmd.readers.append(reader)
    return cmd


def pipeline_file(tmp_path: Path, name: str, epochs: int) -> Path:
    """Digits with a small Keras MLP on two Ray Train workers: TensorFlow's chattiest setup."""
    raw = yaml.safe_load((ROOT / "pipelines" / "digits.yaml").read_text())
    raw["models"] = [
        {
            "name": "mlp",
            "kind": "keras",
            "workers": 2,
            "params": {"hidden": [32], "epochs": epochs, "batch_size": 64, "learning_rate": 0.003},
        }
    ]
    raw["tune"] = {"num_samples": 1, "scheduler": "fifo", "metric": "accuracy"}
    raw["gate"] = {"min": {"accuracy": 0.5}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def log_file(stderr: str) -> Path:
    found = re.search(r"logs: (\S+\.log)", stderr)
    assert found, f"no log file named in:\n{stderr}"
    return Path(found.group(1))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One default `raymlops run` to completion; its store serves the score and serve tests."""
    tmp = tmp_path_factory.mktemp("run")
    cmd = start(["run", str(pipeline_file(tmp, "small", epochs=3)), "--store", str(tmp / "store")], tmp)
    rc = cmd.finish(timeout=900)
    return cmd, rc, tmp


def test_run_shows_the_stages_keeps_worker_logs_in_the_file_and_leaves_nothing(finished_run):
    cmd, rc, _ = finished_run
    err = cmd.stderr
    assert rc == 0, err
    assert cmd.leftovers() == []
    for stage in ("start Ray", "ingest", "checks", "split", "preprocess", "search mlp", "evaluation", "gate"):
        assert re.search(rf"✓ {stage}\s+\d+\.\d s", err), f"stage {stage!r} not shown:\n{err}"
    assert re.search(r"trial 1/1 terminated: epoch 3, best accuracy 0\.\d{4}", err), err
    assert "raymlops run: digits" in err and "promoted to: champion" in err  # the summary table
    for noise in WORKER_NOISE:
        assert noise not in err, f"{noise!r} on the console:\n{err}"
    log = log_file(err).read_text()
    assert "(RayTrainWorker" in log or "pid=" in log, "the workers' lines are not in the log file"
    assert "max_concurrent_trials" not in log  # raymlops's own warning is fixed, not hidden
    assert cmd.out == ""  # stdout stays empty without --json


def test_interrupted_verbose_run_streams_the_logs_exits_130_and_leaves_nothing(tmp_path):
    """-v streams Ray's and Tune's output (as before raymlops had a console) and still keeps the
    log file; Ctrl-C mid-training ends every process of the run and registers nothing."""
    pipeline = pipeline_file(tmp_path, "long", epochs=400)
    cmd = start(["run", str(pipeline), "--store", str(tmp_path / "s"), "-v"], tmp_path)
    cmd.wait_for("trial 1/1 running: epoch", timeout=600)  # Ray Train workers mid-training
    cmd.wait_for("Trial status", timeout=120, stdout_too=True)  # Tune's table, as before raymlops
    cmd.proc.send_signal(signal.SIGINT)
    rc = cmd.finish(timeout=60)
    assert rc == 130, cmd.stderr
    assert "(RayTrainWorker" in cmd.out + cmd.stderr  # the workers' lines stream to the terminal
    assert "interrupted (Ctrl-C)" in cmd.stderr and "--resume" in cmd.stderr
    assert "(RayTrainWorker" in log_file(cmd.stderr).read_text()  # the workers' lines are kept too
    assert cmd.leftovers() == []
    assert not (tmp_path / "s" / "models" / "digits").exists()  # nothing registered


def test_score_leaves_nothing(finished_run):
    _, rc, tmp = finished_run
    assert rc == 0
    rows = tmp / "rows.csv"
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame.drop(columns=["target"]).head(200)
    frame.to_csv(rows, index=False)
    cmd = start(
        ["score", "digits", "--store", str(tmp / "store"), "-i", str(rows), "-o", str(tmp / "scored")], tmp
    )
    assert cmd.finish(timeout=600) == 0, cmd.stderr
    assert "scored 200 of 200 rows" in cmd.stderr
    assert log_file(cmd.stderr).exists()
    assert cmd.leftovers() == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "sig",
    [signal.SIGTERM, signal.SIGINT],
    ids=["SIGTERM", "SIGINT"],
)
def test_serve_stops_within_10s_and_leaves_nothing(finished_run, sig):
    _, rc, tmp = finished_run
    assert rc == 0
    port = _free_port()
    cmd = start(["serve", "digits", "--store", str(tmp / "store"), "--port", str(port)], tmp)
    cmd.wait_for("serving digits", timeout=600)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=30) as resp:
        assert resp.status == 200
    started = time.monotonic()
    cmd.proc.send_signal(sig)
    rc = cmd.finish(timeout=30)
    took = time.monotonic() - started
    assert rc == (143 if sig == signal.SIGTERM else 130), cmd.stderr
    assert took < 10, f"serve took {took:.1f} s to stop"
    assert cmd.leftovers() == [], cmd.stderr
