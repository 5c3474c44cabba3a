"""Shared fixtures of the serving tests: two small trained models and one running Serve application.

Starting Serve costs ~15 s here, so one application on a free port serves every HTTP test of the
session. It serves ``digits`` (a 64-feature classifier with versions 1 and 2, champion 1) and ``mixed``
(a regressor with a categorical feature), requires an API key, follows aliases every 0.5 s and logs
every request. Tests that change shared state (aliases, canary) put it back before they finish.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

API_KEY = "test-key-3f1c"


@dataclass
class Served:
    url: str
    store: str
    api_key: str
    request_log: Path
    start_kwargs: dict[str, Any]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def redeploy(self, **changes: Any) -> None:
        """Run the application again with changed arguments (Serve updates it in place)."""
        from raymlops.serve import start_server

        start_server(**{**self.start_kwargs, **changes})


def free_port() -> int:
    """A TCP port nobody listens on now (never Serve's default 8000)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _digits_config(seed: int) -> dict:
    return {
        "name": "digits",
        "data": {"source": "builtin://digits", "target": "target", "split": {"test_size": 0.2, "seed": 42}},
        "validation": {"max_null_fraction": 0.0, "forbid_constant_columns": False},
        "preprocess": [{"standard_scaler": {"columns": "numeric"}}],
        "models": [
            {"name": "rf", "kind": "random_forest", "params": {"n_estimators": 20, "random_state": seed}}
        ],
        "tune": {"num_samples": 1, "metric": "accuracy", "mode": "max"},
        "gate": {"min": {"accuracy": 0.5}},
        "serve": {"min_replicas": 1, "max_replicas": 1, "max_batch_size": 16, "num_cpus": 0.5},
    }


def mixed_frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """A small regression table with a categorical feature (strings) and two numeric ones."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], size=n)
    size = rng.uniform(0, 10, size=n)
    weight = rng.normal(50, 5, size=n)
    target = 3.0 * size + np.where(colour == "red", 20.0, 0.0) + 0.1 * weight + rng.normal(0, 0.5, size=n)
    return pd.DataFrame({"colour": colour, "size": size, "weight": weight, "target": target})


def _train(raw: dict, store: str, tmp: Path) -> None:
    import yaml

    from raymlops.config import load_pipeline
    from raymlops.pipeline import run_pipeline

    path = tmp / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    run_pipeline(load_pipeline(path), store=store)


def _register_copy(st, ref: str, folder: Path) -> None:
    """Register a version's files again as the next version: a second version without training again."""
    import shutil

    mv, path = st.fetch(ref)
    shutil.copytree(path, folder, ignore=shutil.ignore_patterns("metadata.json"))
    reserved = {"name", "version", "created_at", "files", "package_versions"}
    st.register(mv.name, folder, {k: v for k, v in mv.metadata.items() if k not in reserved})


@pytest.fixture(scope="session")
def serve_store(ray_session, tmp_path_factory) -> str:
    """A store with digits:1 (champion), digits:2 (same files, registered again) and mixed:1 (champion)."""
    from raymlops.registry import ModelStore

    tmp = tmp_path_factory.mktemp("serve-models")
    store = str(tmp / "store")
    _train(_digits_config(seed=0), store, tmp)
    st = ModelStore(store)
    _register_copy(st, "digits:1", tmp / "digits-copy")
    csv = tmp / "mixed.csv"
    mixed_frame().to_csv(csv, index=False)
    _train(
        {
            "name": "mixed",
            "data": {"source": str(csv), "target": "target", "categorical": ["colour"]},
            "preprocess": [{"one_hot_encoder": {"columns": "categorical"}}],
            "models": [{"name": "rf", "kind": "random_forest", "params": {"n_estimators": 20}}],
            "tune": {"num_samples": 1},
            "gate": {},
        },
        store,
        tmp,
    )
    st.set_alias("digits", "champion", 1)
    assert st.get("mixed").version == 1
    return store


@pytest.fixture(scope="session")
def served(serve_store, tmp_path_factory) -> Iterator[Served]:
    """One Serve application for the whole session, on a free port, with auth and a request log."""
    from raymlops.config import ServeOptions
    from raymlops.serve import start_server

    log_dir = tmp_path_factory.mktemp("request-log")
    port = free_port()
    options = ServeOptions.model_validate(
        {
            "min_replicas": 1,
            "max_replicas": 1,
            "max_batch_size": 16,
            "batch_wait_timeout_s": 0.002,
            "num_cpus": 0.5,
            "request_log_sample_rate": 1.0,
        }
    )
    kwargs: dict[str, Any] = {
        "models": ["digits", "mixed"],
        "store": serve_store,
        "port": port,
        "options": options,
        "request_log": str(log_dir),
        "poll_interval_s": 0.5,
        "request_log_flush_s": 1.0,
        "api_key": API_KEY,
        "max_body_bytes": 256 * 1024,
    }
    handle = start_server(**kwargs)
    try:
        yield Served(
            url=handle.url, store=serve_store, api_key=API_KEY, request_log=log_dir, start_kwargs=kwargs
        )
    finally:
        # Serve's graceful shutdown waits out each replica's drain: 2 s behind HAProxy, so it ends
        # well within the bound (at Ray's default drain of 30 s it took 30 s here).
        assert handle.stop(timeout_s=15), "Serve did not shut down within 15 s"


def metrics_text() -> str:
    """Everything Ray's metrics agents export in Prometheus format right now, all nodes together."""
    import httpx
    import ray

    texts = []
    for node in ray.nodes():
        port = node.get("MetricsExportPort")
        if node.get("Alive") and port:
            try:
                texts.append(httpx.get(f"http://{node['NodeManagerAddress']}:{port}/metrics", timeout=5).text)
            except httpx.HTTPError:
                continue
    return "\n".join(texts)
