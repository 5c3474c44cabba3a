"""Tracking failures: an unusable server stops a run before training; one lost later costs no model."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from raymlops.cli import app
from raymlops.config import load_pipeline
from raymlops.pipeline import run_pipeline
from raymlops.registry import ModelStore
from raymlops.tracking import TrackingError

from .conftest import free_port
from .test_mlflow_tracking import write_pipeline

runner = CliRunner()
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


class FlakyProxy:
    """A loopback HTTP proxy to the MLflow server that starts answering 503 once a condition is met.

    Args:
        upstream: the real server's URI.
        break_when: called with (method, path) for every request; once it returns True, this and
            every later request gets a 503 as from a server that went away.
    """

    def __init__(self, upstream: str, break_when) -> None:
        self.upstream = upstream
        self.break_when = break_when
        self.broken = False
        self.refused_paths: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.broken or proxy.break_when(self.command, self.path):
                    proxy.broken = True
                    proxy.refused_paths.append((self.command, self.path))
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                reply = httpx.request(
                    self.command, proxy.upstream + self.path, content=body, headers=headers, timeout=60
                )
                self.send_response(reply.status_code)
                for key, value in reply.headers.items():
                    if key.lower() not in _HOP_HEADERS:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def second_run_created():
    """True from the second `runs/create` on: the parent run is created, the first trial's is not."""
    created = 0

    def check(method: str, path: str) -> bool:
        nonlocal created
        if method == "POST" and path.split("?")[0].endswith("/runs/create"):
            created += 1
        return created >= 2

    return check


def test_unreachable_server_fails_before_anything_trains(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    path = write_pipeline(tmp_path, "bc_dead", tracking=dead)
    with pytest.raises(TrackingError, match=rf"{dead}.*tracking\.mlflow in .*bc_dead\.yaml.*unreachable"):
        run_pipeline(load_pipeline(path), store=str(tmp_path / "store"), pipeline_file=str(path))
    assert not (tmp_path / "store").exists()  # stopped before the store was opened, let alone trained


def test_unreachable_server_is_a_one_line_cli_error(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    path = write_pipeline(tmp_path, "bc_dead_cli")
    result = runner.invoke(
        app, ["run", str(path), "--store", str(tmp_path / "store")], env={"MLFLOW_TRACKING_URI": dead}
    )
    assert result.exit_code != 0
    assert "$MLFLOW_TRACKING_URI" in result.output and "unreachable" in result.output
    assert "Traceback" not in result.output


def test_a_server_that_answers_health_but_refuses_runs_fails_at_start(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with FlakyProxy(mlflow_server, lambda method, path: not path.startswith("/health")) as proxy:
        path = write_pipeline(tmp_path, "bc_refused", tracking=proxy.uri)
        with pytest.raises(TrackingError, match=rf"{proxy.uri}.*cannot be used"):
            run_pipeline(load_pipeline(path), store=str(tmp_path / "store"), pipeline_file=str(path))
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_server_lost_mid_run_warns_and_keeps_the_model(ray_session, mlflow_server, tmp_path, caplog):
    with FlakyProxy(mlflow_server, second_run_created()) as proxy:
        path = write_pipeline(tmp_path, "bc_flaky", samples=1, trees=5, tracking=proxy.uri)
        with caplog.at_level("WARNING", logger="raymlops"):
            summary = run_pipeline(
                load_pipeline(path), store=str(tmp_path / "store"), pipeline_file=str(path)
            )
    # the model is trained, registered and promoted in the raymlops store as without tracking
    assert summary["version"] == 1 and summary["promoted"] == "champion"
    assert ModelStore(str(tmp_path / "store")).get("bc_flaky@champion").version == 1
    # the failure is said once, clearly, and listed in the summary
    warnings = summary["tracking"]["warnings"]
    assert len(warnings) == 1 and "starting the child run of trial" in warnings[0]
    assert "raymlops model store are not affected" in warnings[0]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"].count(warnings[0]) == 1
    # what reached MLflow before the failure is there; nothing after it was attempted
    client = MlflowClient(mlflow_server)
    parent = client.get_run(summary["tracking"]["run_id"])
    assert parent.data.params["name"] == "bc_flaky"
    assert "raymlops.gate.passed" not in parent.data.tags
    assert client.search_registered_models("name = 'bc_flaky'") == []
    # two calls reached the broken server: the refused one, and the last try to mark the run
    # FAILED; every step between them was skipped, not retried. Each call is tried at most 3
    # times (MLFLOW_HTTP_REQUEST_MAX_RETRIES=2); mlflow-skinny 3.18 no longer retries a create.
    calls = [path.rsplit("/", 1)[-1] for _, path in proxy.refused_paths]
    assert calls[0] == "create" and set(calls) == {"create", "update"}, proxy.refused_paths
    assert calls == sorted(calls) and max(calls.count("create"), calls.count("update")) <= 3, calls
