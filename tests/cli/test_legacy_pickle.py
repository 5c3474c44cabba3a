"""``--allow-legacy-pickle``: old pickled versions are refused by default and read only on request, loudly.

A version written before model files became pickle-free holds ``preprocessor.pkl`` and
``model.joblib``; loading it runs whatever code the pickles hold. ``raymlops monitor`` (and
``raymlops run``, whose champion re-scoring loads the current champion) refuse it with a message
naming the flag; with the flag they read it and say that they do.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
_RESERVED = {"name", "version", "created_at", "files", "package_versions"}


def _legacy_copy(store: str, ref: str, folder: Path) -> str:
    """Register ``ref`` again in the old format (pickled preprocessing, joblib forest); its new ref."""
    from raymlops.data.preprocess import FeaturePipeline
    from raymlops.model import ModelBundle
    from raymlops.registry import ModelStore

    st = ModelStore(store)
    mv, path = st.fetch(ref)
    bundle = ModelBundle.from_dir(path, mv.metadata)
    shutil.copytree(path, folder, ignore=shutil.ignore_patterns("metadata.json", "features.json", "*.skops"))
    old = object.__new__(FeaturePipeline)  # what an old raymlops pickled: its fitted plan only
    old.__dict__["plan_"] = [("scale", (step.column, step.scale, step.shift)) for step in bundle.plan.steps]
    (folder / "preprocessor.pkl").write_bytes(pickle.dumps(old))
    joblib.dump(bundle.predictor.estimator, folder / "model.joblib")
    metadata = {k: v for k, v in mv.metadata.items() if k not in _RESERVED}
    return st.register(mv.name, folder, metadata).ref


def _monitor(
    store: str, ref: str, rows: Path, *flags: str, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    # Its own process and embedded Ray: the flag must reach the Ray workers that score the rows.
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAYMLOPS_NUM_CPUS": "2"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAYMLOPS_ALLOW_LEGACY_PICKLE", None)
    args = ["monitor", ref, "--input", str(rows), "--store", store, "--json", *flags]
    return subprocess.run(
        [sys.executable, "-m", "raymlops.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=rows.parent,
    )


@pytest.mark.slow
def test_monitor_reads_a_legacy_version_only_with_the_flag(ray_session: Any, tmp_path: Path) -> None:
    from raymlops.config import load_pipeline
    from raymlops.data.ingest import load_builtin
    from raymlops.pipeline import run_pipeline

    doc = {
        "name": "legacy",
        "data": {"source": "builtin://digits", "target": "target"},
        "validation": {"forbid_constant_columns": False},
        "preprocess": [{"standard_scaler": {"columns": "numeric"}}],
        "models": [{"name": "rf", "kind": "random_forest", "params": {"n_estimators": 10}}],
        "gate": {"min": {"accuracy": 0.5}},
    }
    (tmp_path / "legacy.yaml").write_text(yaml.safe_dump(doc))
    store = str(tmp_path / "store")
    run_pipeline(load_pipeline(tmp_path / "legacy.yaml"), store=store)
    ref = _legacy_copy(store, "legacy:1", tmp_path / "old")
    assert ref == "legacy:2" and (Path(store) / "models" / "legacy" / "2" / "preprocessor.pkl").exists()
    rows = tmp_path / "rows.csv"
    load_builtin("digits").drop(columns=["target"]).iloc[:300].to_csv(rows, index=False)

    # Refused before Ray starts: connecting to this address would hang until the timeout.
    refused = _monitor(store, ref, rows, "--address", "127.0.0.1:9", timeout=90)
    assert refused.returncode == 2, refused.stderr[-3000:]
    message = " ".join(refused.stderr.split())
    assert "pickled model files" in message and "--allow-legacy-pickle" in message
    assert "Traceback" not in refused.stderr

    allowed = _monitor(store, ref, rows, "--allow-legacy-pickle")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "--allow-legacy-pickle: versions written by an older raymlops are unpickled" in " ".join(
        allowed.stderr.split()
    )
    result = json.loads(allowed.stdout)
    assert result["version"] == 2 and result["rows"] == 300 and not result["schema"]["skew"]


def test_run_and_monitor_offer_the_flag() -> None:
    from typer.testing import CliRunner

    from raymlops.cli import app

    for command in ("run", "monitor"):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "--allow-legacy-pickle" in result.stdout, result.stdout
