"""``kind: random_forest``: scikit-learn forests, fitted tree-parallel on Ray, with a compiled fast path.

The forest is saved with skops (never pickled). At registration it is also compiled to ONNX and the
compiled form is kept only when it reproduces scikit-learn's labels and probabilities (|dp| <= 1e-5)
on the held-out rows; ``fast_path.json`` records the check. scikit-learn's ``predict_proba`` costs
~9 ms per call here whatever the batch (joblib start-up), onnxruntime ~0.02 ms for one row, but
scikit-learn's vectorised traversal wins on large batches, so ONNX serves batches up to 4096 rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ._kinds import SavedFiles, check_keys
from ._schema import TableSchema
from ._skops import load_estimator, save_estimator
from .sklearn import SklearnPredictor

__all__ = ["FAST_PATH_FILE", "KIND", "ONNX_FILE", "ForestParams", "compile_forest", "onnx_scores"]

ONNX_FILE = "model.onnx"
FAST_PATH_FILE = "fast_path.json"
ONNX_MAX_ROWS = 4096
PROBA_TOLERANCE = 1e-5
_REGRESSION_RTOL = 1e-5


class ForestParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_estimators: int = Field(100, ge=1)
    max_depth: int | None = Field(None, ge=1)
    min_samples_leaf: int | float = 1
    max_features: Literal["sqrt", "log2"] | float | int | None = "sqrt"
    class_weight: Literal["balanced", "balanced_subsample"] | None = None
    bootstrap: bool = True
    max_samples: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Share of rows each tree's bootstrap draws; bounds per-tree memory and time",
    )
    random_state: int = 0


def onnx_scores(session: Any, X: np.ndarray, task: str) -> np.ndarray:
    name = session.get_inputs()[0].name
    outputs = session.run(None, {name: np.asarray(X, dtype=np.float32)})
    if task == "classification":
        return np.asarray(outputs[1], dtype=np.float64)
    return np.asarray(outputs[0], dtype=np.float64).reshape(-1)


def _onnx_session(model: bytes | str) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def compile_forest(estimator: Any, task: str, check_X: np.ndarray) -> tuple[bytes | None, dict[str, Any]]:
    """ONNX bytes (or None) and the report of the comparison with scikit-learn on ``check_X``."""
    try:
        from skl2onnx import to_onnx

        sample = np.asarray(check_X[:1], dtype=np.float32)
        options = {id(estimator): {"zipmap": False}} if task == "classification" else None
        model_bytes = to_onnx(estimator, sample, options=options, target_opset={"": 17, "ai.onnx.ml": 3})
        session = _onnx_session(model_bytes.SerializeToString())
    except Exception as err:  # noqa: BLE001 - the fast path is optional; say why it is off
        return None, {"onnx": False, "reason": f"conversion failed: {err}"}
    X = np.asarray(check_X, dtype=np.float32)
    compiled = onnx_scores(session, X, task)
    if task == "classification":
        reference = estimator.predict_proba(X)
        max_diff = float(np.abs(compiled - reference).max()) if len(X) else 0.0
        same_labels = bool(np.array_equal(compiled.argmax(axis=1), reference.argmax(axis=1)))
        ok = same_labels and max_diff <= PROBA_TOLERANCE
    else:
        reference = estimator.predict(X)
        scale = float(np.abs(reference).max()) if len(X) else 1.0
        max_diff = float(np.abs(compiled - reference).max()) if len(X) else 0.0
        same_labels = True
        ok = max_diff <= _REGRESSION_RTOL * max(scale, 1.0)
    report: dict[str, Any] = {
        "onnx": ok,
        "checked_rows": int(len(X)),
        "max_abs_diff": max_diff,
        "same_labels": same_labels,
        "max_rows": ONNX_MAX_ROWS,
    }
    if not ok:
        report["reason"] = "compiled predictions differ from scikit-learn's on the held-out rows"
    return (model_bytes.SerializeToString() if ok else None), report


class ForestPredictor(SklearnPredictor):
    """scikit-learn for large batches, the verified ONNX form for small ones."""

    def __init__(self, estimator: Any, task: str, n_classes: int, onnx: Any = None) -> None:
        super().__init__(estimator, task, n_classes)
        self.onnx = onnx

    def scores(self, X: np.ndarray) -> np.ndarray:
        if self.onnx is not None and len(X) <= ONNX_MAX_ROWS:
            return onnx_scores(self.onnx, X, self.task)
        return super().scores(X)


class RandomForestKind:
    name = "random_forest"
    gpu_scoring = False

    def check_config(self, model: Any) -> None:
        ForestParams.model_validate(model.params)
        check_keys(model.search, ForestParams.model_fields, "search", "kind random_forest")

    def wrap(self, estimator: Any, schema: TableSchema) -> ForestPredictor:
        return ForestPredictor(estimator, schema.task, schema.n_classes)

    def save(
        self, estimator: Any, folder: Path, *, schema: TableSchema, check_X: np.ndarray | None = None
    ) -> SavedFiles:
        folder = Path(folder)
        files = [save_estimator(estimator, folder)]
        if check_X is None:
            return SavedFiles(files)
        model_bytes, report = compile_forest(estimator, schema.task, check_X)
        (folder / FAST_PATH_FILE).write_text(json.dumps(report, indent=2))
        files.append(FAST_PATH_FILE)
        if model_bytes is not None:
            (folder / ONNX_FILE).write_bytes(model_bytes)
            files.append(ONNX_FILE)
        return SavedFiles(files, report)

    def load(
        self, folder: Path, metadata: dict[str, Any], *, schema: TableSchema, threads: int | None = None
    ) -> ForestPredictor:
        folder = Path(folder)
        estimator = load_estimator(folder)
        onnx = None
        if (folder / ONNX_FILE).exists():
            try:
                onnx = _onnx_session(str(folder / ONNX_FILE))
            except Exception:  # noqa: BLE001 - a broken optional fast path must never stop serving
                onnx = None
        return ForestPredictor(estimator, schema.task, schema.n_classes, onnx)


KIND = RandomForestKind()
