"""Every model kind is scored and served the same way, and none of their versions holds a pickle.

For each kind (keras, random_forest, sklearn, xgboost) a tiny model is trained through the real
pipeline (``raymlops run``) into a temporary store; the same rows then go through ``raymlops
score`` (Ray Data, Parquet out) and through ``raymlops serve`` (a real server in its own process,
over HTTP), and the predictions must agree. Every file of each freshly registered version (and
every member of the zip files among them: ``.keras``, ``.skops``) is scanned for pickle streams
with ``pickletools``: a version must be loadable without running code. The file is named to run
after the other serving tests, which share one Serve application in the session's Ray.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from raymlops.cli import app
from raymlops.data.ingest import load_builtin

from .conftest import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
ROWS = 120
KINDS: dict[str, dict[str, Any]] = {
    "keras": {
        "kind": "keras",
        "params": {"hidden": [32], "epochs": 10, "batch_size": 64, "learning_rate": 0.01},
    },
    "random_forest": {"kind": "random_forest", "params": {"n_estimators": 15, "random_state": 0}},
    "sklearn": {
        "kind": "sklearn",
        "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
        "params": {"max_iter": 15, "random_state": 0},
    },
    "xgboost": {"kind": "xgboost", "workers": 1, "params": {"num_boost_round": 10, "max_depth": 3}},
}


@dataclass
class Registered:
    name: str
    folder: Path  # the version's files in the store
    features: list[str]
    classes: list[Any]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zkinds") / "store"


@pytest.fixture(scope="module")
def models(ray_session: Any, store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Registered]:
    """One tiny digits model per kind, each through ``raymlops run`` into the same store."""
    folder = tmp_path_factory.mktemp("zkinds-pipelines")
    out = {}
    for kind, entry in KINDS.items():
        name = f"zk_{kind}"
        doc = {
            "name": name,
            "data": {
                "source": "builtin://digits",
                "target": "target",
                "split": {"test_size": 0.2, "seed": 1},
            },
            "validation": {"forbid_constant_columns": False},
            "preprocess": [{"standard_scaler": {"columns": "numeric"}}],
            "models": [{"name": kind.replace("_", "-"), **entry}],
            "tune": {"num_samples": 1},
            "gate": {"min": {"accuracy": 0.5}},
            "serve": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.25, "max_batch_size": 8},
        }
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        result = runner.invoke(app, ["run", str(path), "--store", str(store), "--json"])
        assert result.exit_code == 0, f"{kind}: {result.output[-3000:]}"
        summary = json.loads(result.stdout)
        assert summary["models"][0]["kind"] == kind
        assert summary["promoted"] == "champion", (kind, summary["metrics"], summary["gate"])
        version = store / "models" / name / str(summary["version"])
        schema = json.loads((version / "schema.json").read_text())
        out[kind] = Registered(name, version, list(schema["features"]), list(schema["classes"]))
    return out


@pytest.fixture(scope="module")
def rows(
    models: dict[str, Registered], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, pd.DataFrame]:
    """Raw digits rows with an id, as a CSV; the features are whatever the models were trained on."""
    features = models["random_forest"].features
    assert all(m.features == features for m in models.values())
    frame = load_builtin("digits").iloc[:ROWS]
    frame = frame[features].assign(id=np.arange(ROWS))
    path = tmp_path_factory.mktemp("zkinds-rows") / "rows.csv"
    frame.to_csv(path, index=False)
    return path, frame


@pytest.fixture(scope="module")
def scored(
    models: dict[str, Registered], rows: tuple[Path, pd.DataFrame], store: Path, tmp_path_factory: Any
) -> dict[str, pd.DataFrame]:
    """``raymlops score`` of the rows, per kind, sorted by id."""
    out = {}
    for kind, model in models.items():
        target = tmp_path_factory.mktemp(f"scored-{kind}") / "out"
        args = ["score", model.name, "--store", str(store), "--input", str(rows[0]), "--output", str(target)]
        result = runner.invoke(app, [*args, "--keep", "id", "--json"])
        assert result.exit_code == 0, f"{kind}: {result.output[-3000:]}"
        summary = json.loads(result.stdout)
        assert summary["rows_scored"] == ROWS and summary["rows_rejected"] == 0, summary
        parts = sorted(target.glob("part-*.parquet"))
        frame = pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
        out[kind] = frame.sort_values("id").reset_index(drop=True)
    return out


@pytest.fixture(scope="module")
def server(models: dict[str, Registered], store: Path) -> Iterator[str]:
    """``raymlops serve`` of all four models, in its own process and its own embedded Ray."""
    port = free_port()
    env = {**os.environ, "RAYMLOPS_NUM_CPUS": "4", "PYTHONPATH": str(REPO)}
    for key in ("RAY_ADDRESS", "RAYMLOPS_API_KEY"):
        env.pop(key, None)
    names = [m.name for m in models.values()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "raymlops.cli", "serve", *names, "--store", str(store), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while not any(f"at {url}" in line for line in lines):
            assert proc.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "raymlops serve did not come up:\n" + "".join(lines)[-3000:]
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=10)


def _proba(frame: pd.DataFrame, classes: list[Any]) -> np.ndarray:
    return frame[[f"proba_{c}" for c in classes]].to_numpy(dtype=np.float64)


@pytest.mark.parametrize("kind", list(KINDS))
def test_score_and_serve_give_the_same_predictions(
    kind: str,
    models: dict[str, Registered],
    rows: tuple[Path, pd.DataFrame],
    scored: dict[str, pd.DataFrame],
    server: str,
) -> None:
    model, frame, batch = models[kind], rows[1], scored[kind]
    assert batch["id"].tolist() == list(range(ROWS))
    columns = {f: frame[f].astype(float).tolist() for f in model.features}
    r = httpx.post(f"{server}/v1/models/{model.name}:predict", json={"inputs": columns}, timeout=120)
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    served_labels = np.asarray(outputs["prediction"])
    served_proba = np.asarray(outputs["probabilities"], dtype=np.float64)
    assert served_proba.shape == (ROWS, len(model.classes))
    assert (served_labels == batch["prediction"].to_numpy()).all()
    np.testing.assert_allclose(served_proba, _proba(batch, model.classes), rtol=1e-5, atol=1e-6)
    # One row at a time (the latency path, a row object) gives the same answer as the batch.
    one = {f: float(frame[f].iloc[7]) for f in model.features}
    r1 = httpx.post(f"{server}/v1/models/{model.name}:predict", json={"instances": [one]}, timeout=60)
    assert r1.status_code == 200, r1.text
    (pred,) = r1.json()["predictions"]
    assert pred["prediction"] == batch["prediction"].iloc[7]
    np.testing.assert_allclose(pred["probabilities"], _proba(batch, model.classes)[7], rtol=1e-5, atol=1e-6)
    # And the model is not guessing: the rows are training-distribution digits.
    assert (
        np.mean(batch["prediction"].to_numpy() == load_builtin("digits")["target"].to_numpy()[:ROWS]) >= 0.5
    )


# --- no pickle in a version ------------------------------------------------------------------------

_PROTO = re.compile(rb"\x80[\x02-\x05]")
_CODE_OPS = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _parses_as_pickle(blob: bytes, start: int) -> set[str] | None:
    """The opcodes of a complete pickle stream at ``start``, or None when there is none."""
    ops: set[str] = set()
    try:
        for op, _, _ in pickletools.genops(io.BytesIO(blob[start:])):
            ops.add(op.name)
            if op.name == "STOP":
                return ops
    except Exception:
        return None
    return None


def pickle_streams(blob: bytes, where: str) -> list[str]:
    """Pickle streams in a file: at its start (any protocol), after any protocol-2+ header, in zip members."""
    found = []
    ops = _parses_as_pickle(blob, 0)
    if ops is not None and len(ops) > 2:
        found.append(f"{where}@0 {sorted(ops)}")
    for m in _PROTO.finditer(blob):
        ops = _parses_as_pickle(blob, m.start())
        if ops is not None and ops & _CODE_OPS:
            found.append(f"{where}@{m.start()} {sorted(ops & _CODE_OPS)}")
    if zipfile.is_zipfile(io.BytesIO(blob)):
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            for member in zf.namelist():
                found += pickle_streams(zf.read(member), f"{where}!{member}")
    return found


def test_the_pickle_scan_finds_pickles() -> None:
    # The scanner must not pass vacuously: a plain pickle, one inside a zip (how .npz and old
    # skops files carry them) and one after a header are all found; JSON and numbers are not.
    evil = pickle_payload()
    assert pickle_streams(evil, "p")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("config.json", json.dumps({"a": 1}))
        zf.writestr("arr.npy", b"\x93NUMPY" + evil)
    assert any("!arr.npy" in hit for hit in pickle_streams(buf.getvalue(), "z"))
    np_buf = io.BytesIO()
    np.save(np_buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert pickle_streams(np_buf.getvalue(), "npy")
    assert not pickle_streams(json.dumps({"proba": [0.1, 0.9]}).encode(), "j")
    assert not pickle_streams(np.arange(1000, dtype=np.float64).tobytes(), "f")


def pickle_payload() -> bytes:
    import pickle

    return pickle.dumps(np.ones(3), protocol=4)  # numpy's reconstructor: GLOBAL + REDUCE


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_fresh_version_holds_no_pickle(kind: str, models: dict[str, Registered]) -> None:
    folder = models[kind].folder
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    metadata = json.loads((folder / "metadata.json").read_text())
    assert {str(p.relative_to(folder)) for p in files} == {*metadata["files"], "metadata.json"} | {
        str(p.relative_to(folder)) for p in files if p.name.startswith("signature")
    }
    hits = [hit for p in files for hit in pickle_streams(p.read_bytes(), str(p.relative_to(folder)))]
    assert hits == [], hits
    assert not [p for p in files if p.suffix in (".pkl", ".pickle", ".joblib", ".h5")]
