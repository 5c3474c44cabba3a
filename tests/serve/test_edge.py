"""The serving edge against a running application: closed by default, auth first, bounded metric
labels, no 5xx from client input, bodies limited while they stream in, the chosen ingress."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from typer.testing import CliRunner

from raymlops.cli import app
from raymlops.errors import ConfigError
from raymlops.model import ModelBundle

from .conftest import Served, metrics_text

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def n_features(served: Served) -> int:
    return len(ModelBundle.load("digits:1", served.store).schema.features)


@pytest.fixture(scope="module")
def good(n_features: int) -> dict:
    return {"instances": [[0.0] * n_features]}


@pytest.fixture(scope="module")
def client(served: Served):
    with httpx.Client(base_url=served.url, headers=served.auth, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def anon(served: Served):
    with httpx.Client(base_url=served.url, timeout=30) as c:
        yield c


def _listeners(port: int) -> list[str]:
    """Names of the processes listening on TCP ``port`` (read from /proc: Linux only)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                    inodes.add(fields[9])
    names = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            if any(f"socket:[{inode}]" in links for inode in inodes):
                names.append(Path(f"/proc/{pid}/comm").read_text().strip())
    return names


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc")
def test_the_session_server_runs_on_haproxy_ingress(served):
    """The default ingress (auto) is HAProxy here: the process listening on the port is haproxy."""
    names = _listeners(int(urlparse(served.url).port or 0))
    assert names and all(name == "haproxy" for name in names), names


def test_auth_is_checked_before_anything_else(anon, good):
    for method, path, kwargs in [
        ("GET", "/v3/whatever", {}),
        ("GET", "/v1/models", {}),
        ("POST", "/v1/models/nope:predict", {"json": good}),
        ("GET", "/v1/models/digits:predict", {}),
        ("POST", "/v1/models/digits:predict", {"content": b"x", "headers": {"content-type": "text/plain"}}),
        ("POST", "/v1/models/digits:predict", {"json": {"instances": [[0.0] * 9] * 20_000}}),
        ("POST", "/v2/models/digits/versions/%C2%B2/infer", {"json": good}),
    ]:
        r = anon.request(method, path, **kwargs)
        assert r.status_code == 401, (method, path, r.status_code, r.text[:200])


def test_readiness_without_a_key_says_only_ready_or_not(anon, client):
    assert anon.get("/v2/models/digits/ready").json() == {"ready": True}
    missing = anon.get("/v2/models/nope/ready")
    assert missing.status_code == 404 and missing.json() == {"ready": False}
    assert anon.get("/v2/models/digits/versions/9/ready").json() == {"ready": False}
    assert client.get("/v2/models/digits/ready").json()["version"] == "1"  # with the key: details


def test_metric_labels_carry_only_served_models(client, anon, good):
    names = [f"zz-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for name in names:
        assert client.post(f"/v1/models/{name}:predict", json=good).status_code == 404
        assert anon.post(f"/v1/models/{name}:predict", json=good).status_code == 401
    assert client.post("/v1/models/digits:predict", json=good).status_code == 200
    deadline = time.monotonic() + 60
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = [ln for ln in metrics_text().splitlines() if "raymlops_requests" in ln]
        if any('model="unknown"' in ln and 'status="401"' in ln for ln in lines) and any(
            'model="unknown"' in ln and 'status="404"' in ln for ln in lines
        ):
            break
        time.sleep(2)
    assert not any(name in ln for ln in lines for name in names), [ln for ln in lines if "zz-" in ln][:5]
    assert any('model="unknown"' in ln and 'status="401"' in ln for ln in lines), lines[:10]
    assert any('model="unknown"' in ln and 'status="404"' in ln for ln in lines), lines[:10]


def test_client_input_that_used_to_crash_the_replica_is_a_4xx(client, good, n_features):
    v2 = {"inputs": [{"name": "x", "shape": [1, n_features], "datatype": "FP64", "data": [0.0] * n_features}]}
    cases = [
        ("POST", "/v1/models/digits/versions/%C2%B2:predict", {"json": good}),
        ("POST", "/v1/models/digits/versions/" + "9" * 4300 + ":predict", {"json": good}),
        ("POST", "/v2/models/digits/versions/%D9%A1/infer", {"json": v2}),
        (
            "POST",
            "/v2/models/digits/infer",
            {"json": {**v2, "outputs": [{"name": "prediction", "parameters": "x"}]}},
        ),
        ("POST", "/v1/models/digits:predict", {"content": b"[" * 100_000 + b"]" * 100_000}),
        (
            "POST",
            "/v2/models/digits/infer",
            {"json": v2, "headers": {"Inference-Header-Content-Length": "²".encode()}},
        ),
    ]
    for method, path, kwargs in cases:
        r = client.request(method, path, **kwargs)
        assert 400 <= r.status_code < 500, (path[:80], r.status_code, r.text[:200])
        assert "error" in r.json()
    assert client.post("/v1/models/digits:predict", json=good).status_code == 200


def test_a_chunked_body_is_cut_off_at_the_limit_while_it_streams_in(served):
    """No Content-Length and a body that never ends: the answer is 413 once the limit is passed."""
    url = urlparse(served.url)
    head = (
        "POST /v1/models/digits:predict HTTP/1.1\r\n"
        f"Host: {url.hostname}\r\nAuthorization: Bearer {served.api_key}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"[0.0," * 13_000  # 65 KB per chunk; the served limit is 256 KiB
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    answer = b""
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(head)
        sent = 0
        while sent < 64 * 1024 * 1024 and not answer:
            try:
                sock.sendall(framed)
            except OSError:  # the server stopped reading (it has answered) or closed the connection
                break
            sent += len(chunk)
            readable, _, _ = select.select([sock], [], [], 0.01)
            if readable:
                answer = sock.recv(65536)
        if not answer:
            sock.settimeout(10)
            answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), (sent, answer[:200])
    assert sent < 16 * 1024 * 1024, f"the server read {sent} bytes before refusing"


def test_serving_without_a_key_on_a_public_address_is_refused_unless_insecure(serve_store, monkeypatch):
    from raymlops.serve import start_server

    monkeypatch.delenv("RAYMLOPS_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="without an API key"):
        start_server(["digits"], store=serve_store, host="0.0.0.0", port=1)
    result = CliRunner().invoke(app, ["serve", "digits", "--store", serve_store, "--host", "0.0.0.0"])
    assert result.exit_code == 2, result.output
    assert "without an API key" in result.output and "--insecure" in result.output


def test_generated_configs_require_a_key_in_every_replica_unless_insecure(serve_store, tmp_path):
    import yaml

    for flags, required in (([], True), (["--insecure"], False)):
        out = tmp_path / f"serve{len(flags)}.yaml"
        result = CliRunner().invoke(
            app, ["serve", "config", "digits", "--store", serve_store, "-o", str(out), *flags]
        )
        assert result.exit_code == 0, result.output
        config = yaml.safe_load(out.read_text())
        args = config["applications"][0]["args"]
        assert args.get("require_api_key", True) is required
        env = config["controller_options"]["runtime_env"]["env_vars"]
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        deployment = config["applications"][0]["deployments"][0]
        assert deployment["ray_actor_options"]["runtime_env"]["env_vars"]["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


def test_serve_s_own_haproxy_request_metrics_are_off_unless_asked_for(serve_store, tmp_path):
    import yaml

    for flags, expected in (([], "0"), (["--ingress-metrics"], "1")):
        out = tmp_path / f"metrics{len(flags)}.yaml"
        result = CliRunner().invoke(
            app, ["serve", "config", "digits", "--store", serve_store, "-o", str(out), *flags]
        )
        assert result.exit_code == 0, result.output
        env = yaml.safe_load(out.read_text())["controller_options"]["runtime_env"]["env_vars"]
        assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == expected
        assert "RAY_SERVE_HAPROXY_NBTHREAD" not in env  # a cluster's nodes keep Serve's default


def test_haproxy_threads_fit_the_machine():
    from raymlops.serve._ingress import controller_env, haproxy_threads

    assert [haproxy_threads(c) for c in (1, 2, 4, 8, 64)] == [1, 1, 2, 4, 4]
    env = controller_env("haproxy", local=True)
    assert env["RAY_SERVE_HAPROXY_NBTHREAD"] == str(haproxy_threads(os.cpu_count() or 1))
    assert "RAY_SERVE_HAPROXY_NBTHREAD" not in controller_env("proxy", local=True)


def test_a_stopping_replica_behind_haproxy_drains_for_seconds_not_30(monkeypatch):
    """Promotions, scale-downs and shutdowns wait out the drain; HAProxy deregisters within a reload."""
    from raymlops.serve._ingress import HAPROXY_DRAIN_S, controller_env

    var = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
    monkeypatch.delenv(var, raising=False)
    assert controller_env("haproxy", local=True)[var] == str(HAPROXY_DRAIN_S) == "2.0"
    assert var not in controller_env("direct", local=True)  # a user's balancer in front: Ray's 30 s
    monkeypatch.setenv(var, "12")
    assert controller_env("haproxy", local=False)[var] == "12"  # what the user exports wins
