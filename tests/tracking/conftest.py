"""A real MLflow tracking server (sqlite backend, local artifact folder) for the tracking tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

_START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mlflow_server(root: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on a free loopback port, once ``/health`` answers; (process, URI)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(root / "server.log", "wb")  # noqa: SIM115 - kept open for the server's lifetime
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
        start_new_session=True,  # its own process group: the uvicorn child goes down with it
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited with {proc.returncode}: {(root / 'server.log').read_text()}"
            )
        try:
            if httpx.get(uri + "/health", timeout=2).status_code == 200:
                return proc, uri
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_mlflow_server(proc)
    raise RuntimeError(f"mlflow server did not answer /health in {_START_TIMEOUT_S} s")


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """The tracking URI of a server shared by the session's tracking tests; stopped afterwards."""
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield uri
    stop_mlflow_server(proc)


@pytest.fixture(autouse=True)
def _isolated_mlflow_env(monkeypatch, tmp_path):
    """No tracking unless a test asks for it; raymlops's fetch cache inside the test's folder."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAYMLOPS_CACHE", str(tmp_path / "cache"))
