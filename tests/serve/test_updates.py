"""Zero-downtime updates: promotion and rollback under steady load, and a canary split."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest
from typer.testing import CliRunner

from raymlops.cli import app

from .conftest import Served, metrics_text

pytestmark = pytest.mark.slow


def _good(served: Served) -> dict:
    """One row of zeros for the served model (its feature count, whatever training kept)."""
    from raymlops.model import ModelBundle

    return {"instances": [[0.0] * len(ModelBundle.load("digits:1", served.store).schema.features)]}


class Load:
    """Closed-loop clients posting the same request until stopped; every answer is kept."""

    def __init__(self, served: Served, clients: int = 4, rows: int = 1) -> None:
        self.served = served
        self.results: list[tuple[int, str | None]] = []
        self.body = _good(served)
        self.body["instances"] = self.body["instances"] * rows
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.served.url, headers=self.served.auth, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post("/v1/models/digits:predict", json=self.body)
                    self.results.append((r.status_code, r.headers.get("x-model-version") or r.text[:200]))
                except httpx.HTTPError as err:
                    self.results.append((0, repr(err)))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def wait_for(self, version: str, timeout_s: float = 30.0, settle: int = 20) -> None:
        """Wait until the last ``settle`` answers all came from ``version``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            tail = self.results[-settle:]
            if len(tail) == settle and all(v == version for _, v in tail):
                return
            time.sleep(0.1)
        raise AssertionError(
            f"version {version} not serving after {timeout_s} s: {Counter(self.results[-50:])}"
        )

    def failures(self) -> list[tuple[int, str | None]]:
        return [r for r in self.results if r[0] != 200]


def _promote(served: Served, ref: str) -> None:
    result = CliRunner().invoke(app, ["models", "promote", ref, "--store", served.store])
    assert result.exit_code == 0, result.output


def test_promotion_and_rollback_under_steady_load_fail_no_request(served):
    with Load(served) as load:
        load.wait_for("1")
        _promote(served, "digits:2")  # `raymlops models promote`, as an operator would
        load.wait_for("2")
        _promote(served, "digits:1")  # rollback is promoting back
        load.wait_for("1")
    versions = Counter(v for _, v in load.results)
    assert load.failures() == [], load.failures()[:5]
    assert versions["1"] > 0 and versions["2"] > 0, versions
    assert len(load.results) > 50


def test_canary_split_changes_in_place_and_reports_per_version_metrics(served):
    GOOD = _good(served)  # noqa: N806
    with httpx.Client(base_url=served.url, headers=served.auth, timeout=30) as client:
        try:
            with Load(served, clients=2) as load:
                load.wait_for("1", settle=5)
                served.redeploy(canary=["digits:2=50"])  # only user_config changes: replicas stay up
                time.sleep(0.5)
            assert load.failures() == [], load.failures()[:5]

            seen = Counter(
                client.post("/v1/models/digits:predict", json=GOOD).headers["x-model-version"]
                for _ in range(60)
            )
            assert seen["1"] > 5 and seen["2"] > 5, seen
            assert (
                client.post("/v1/models/digits/versions/2:predict", json=GOOD).headers["x-model-version"]
                == "2"
            )
            status = client.get("/v1/models/digits").json()["model_version_status"]
            assert [s["version"] for s in status] == ["1", "2"]
            assert client.get("/v2/models/digits").json()["versions"] == ["1", "2"]

            deadline = time.monotonic() + 45
            lines: list[str] = []
            while time.monotonic() < deadline:
                lines = [ln for ln in metrics_text().splitlines() if ln.startswith("ray_raymlops_requests")]
                if any('version="2"' in ln for ln in lines) and any('version="1"' in ln for ln in lines):
                    break
                time.sleep(2)
            assert any('model="digits"' in ln and 'version="2"' in ln for ln in lines), lines[:10]
        finally:
            served.redeploy(canary=[])
        tail = [
            client.post("/v1/models/digits:predict", json=GOOD).headers["x-model-version"] for _ in range(20)
        ]
        assert set(tail) == {"1"}


def test_autoscaling_adds_a_replica_under_load_on_the_chosen_ingress_without_failing_a_request(served):
    """Replicas scale on ongoing requests with HAProxy in front too (its metrics come from replicas)."""
    from ray import serve

    from raymlops.config import ServeOptions

    base = served.start_kwargs["options"]
    scaled = ServeOptions.model_validate(
        {**base.model_dump(), "max_replicas": 2, "target_ongoing_requests": 0.01}
    )

    def running() -> int:
        app_status = serve.status().applications["raymlops"]
        counts = app_status.deployments["ModelServer"].replica_states
        return int(counts.get("RUNNING", 0))

    try:
        served.redeploy(options=scaled)
        # The replica's share of a request's time is small next to the test's own HTTP client, so
        # requests carry 200 rows and the target is low: the replica's ongoing count must exceed it.
        with Load(served, clients=8, rows=200) as load:
            deadline = time.monotonic() + 180  # Serve waits upscale_delay_s (30 s) on its metrics
            while time.monotonic() < deadline and running() < 2:
                time.sleep(1)
            assert running() == 2, serve.status().applications["raymlops"].deployments
            time.sleep(2)  # traffic now reaches both replicas through the ingress
        assert load.failures() == [], load.failures()[:5]
    finally:
        served.redeploy(options=base)
