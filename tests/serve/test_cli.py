"""`raymlops serve config` and `raymlops serve` from the command line."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from raymlops.cli import app
from raymlops.errors import ConfigError

from .conftest import free_port

pytestmark = pytest.mark.slow


def test_serve_config_is_a_valid_serve_deploy_config_with_an_importable_builder(serve_store, tmp_path):
    from ray.serve.schema import ServeDeploySchema

    out = tmp_path / "serve.yaml"
    result = CliRunner().invoke(
        app,
        [
            "serve",
            "config",
            "digits",
            "mixed:1",
            "--store",
            serve_store,
            "--canary",
            "digits:2=10",
            "--max-replicas",
            "3",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(config)
    (application,) = config["applications"]
    assert application["import_path"] == "raymlops.serve.app:build_app"
    assert application["args"]["models"] == ["digits", "mixed:1"]
    assert application["args"]["store"] == serve_store
    (deployment,) = application["deployments"]
    # the pipeline file's serve: section (recorded with digits) plus the flag given
    assert deployment["autoscaling_config"]["max_replicas"] == 3
    assert deployment["user_config"]["max_batch_size"] == 16
    assert deployment["user_config"]["canary"] == {"digits": {"version": 2, "percent": 10.0}}
    assert deployment["max_ongoing_requests"] == 100
    assert config["http_options"]["host"] == "0.0.0.0"

    module, _, attr = application["import_path"].partition(":")
    built = getattr(importlib.import_module(module), attr)(application["args"])
    assert type(built).__name__ == "Application"
    with pytest.raises(ConfigError, match="modles"):
        getattr(importlib.import_module(module), attr)({"modles": ["digits"]})


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["serve", "config", "digits"], "needs -o"),
        (["serve", "config", "nope", "-o", "x.yaml"], "'nope' not found"),
        (["serve", "digits", "--canary", "digits:9=5"], "no version 9"),
        (["serve", "digits", "--canary", "digits=5"], "NAME:VERSION=PERCENT"),
        (["serve", "digits", "-o", "x.yaml"], "-o is for"),
    ],
)
def test_serve_refuses_mistakes_before_starting_anything(serve_store, argv, words):
    result = CliRunner().invoke(app, [*argv, "--store", serve_store])
    assert result.exit_code == 2, result.output
    assert words in result.output


def test_raymlops_serve_blocks_serves_and_stops_on_ctrl_c(serve_store, tmp_path):
    """The real command in its own process (and its own embedded Ray), as a user runs it."""
    port = free_port()
    env = {**os.environ, "RAYMLOPS_API_KEY": "cli-key", "RAYMLOPS_NUM_CPUS": "2"}
    env.pop("RAY_ADDRESS", None)  # its own embedded Ray, like a user's first run
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "raymlops.cli",
            "serve",
            "digits",
            "--store",
            serve_store,
            "--port",
            str(port),
            "--max-batch-size",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    url = f"http://127.0.0.1:{port}"
    from raymlops.model import ModelBundle

    row = [0.0] * len(ModelBundle.load("digits:1", serve_store).schema.features)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not any(f"at {url}" in line for line in lines):
            assert proc.poll() is None, "".join(lines)[-3000:]
            time.sleep(0.5)
        assert httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
        r = httpx.post(
            f"{url}/v1/models/digits:predict",
            json={"instances": [row]},
            headers={"Authorization": "Bearer cli-key"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert httpx.post(f"{url}/v1/models/digits:predict", json={"instances": [row]}).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=10)
    output = "".join(lines)
    assert proc.returncode == 130, output[-3000:]  # Ctrl-C's exit status, as for every command
    assert f"at http://127.0.0.1:{port}" in output and "bearer key required" in output
