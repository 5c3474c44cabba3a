"""``kind: random_forest``: scikit-learn forests, fitted tree-parallel on Ray, with compiled fast paths.

The forest is saved with skops (never pickled). At registration two compiled forms are checked
against scikit-learn on the held-out rows, and each is used only when it reproduces scikit-learn's
labels and probabilities (|dp| <= 1e-5) there; ``fast_path.json`` records both checks:

* ONNX (``model.onnx``): scikit-learn's ``predict_proba`` costs ~9 ms per call here whatever the
  batch (joblib start-up), onnxruntime ~0.02 ms for one row, so ONNX serves batches up to 4096 rows;
* the packed numba traversal of :mod:`._forest_kernel` (no file: built from the estimator at load):
  ~1.6x scikit-learn's rows/s on one core for large batches (batch scoring, large requests).

``RAYMLOPS_FOREST_COMPILED=0`` turns the second off (scikit-learn scores large batches), e.g. to
compare the two in ``benchmarks/batch_score.py``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ._kinds import SavedFiles, check_keys
from ._schema import TableSchema
from ._skops import load_estimator, save_estimator
from .sklearn import SklearnPredictor

__all__ = [
    "COMPILED_ENV",
    "FAST_PATH_FILE",
    "KIND",
    "ONNX_FILE",
    "ForestParams",
    "ForestPredictor",
    "check_compiled",
    "compile_forest",
    "onnx_scores",
]

log = logging.getLogger("raymlops")

ONNX_FILE = "model.onnx"
FAST_PATH_FILE = "fast_path.json"
ONNX_MAX_ROWS = 4096
PROBA_TOLERANCE = 1e-5
_REGRESSION_RTOL = 1e-5
#: Set to 0 to score large batches through scikit-learn even where the compiled traversal was verified.
COMPILED_ENV = "RAYMLOPS_FOREST_COMPILED"


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
    ok, max_diff, same_labels = _agrees(onnx_scores(session, X, task), estimator, task, X)
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


def _reference(estimator: Any, task: str, X: np.ndarray) -> np.ndarray:
    if task == "classification":
        return np.asarray(estimator.predict_proba(X), dtype=np.float64)
    return np.asarray(estimator.predict(X), dtype=np.float64).reshape(-1)


def _agrees(candidate: np.ndarray, estimator: Any, task: str, X: np.ndarray) -> tuple[bool, float, bool]:
    """(same within tolerance, max |difference|, same labels) of ``candidate`` and scikit-learn on ``X``."""
    reference = _reference(estimator, task, X)
    if candidate.shape != reference.shape:
        return False, float("inf"), False
    max_diff = float(np.abs(candidate - reference).max()) if len(X) else 0.0
    if task == "classification":
        same_labels = bool(np.array_equal(candidate.argmax(axis=1), reference.argmax(axis=1)))
        return same_labels and max_diff <= PROBA_TOLERANCE, max_diff, same_labels
    scale = float(np.abs(reference).max()) if len(X) else 1.0
    return max_diff <= _REGRESSION_RTOL * max(scale, 1.0), max_diff, True


def check_compiled(estimator: Any, task: str, check_X: np.ndarray) -> dict[str, Any]:
    """The compiled traversal's agreement with scikit-learn on the held-out rows (for fast_path.json)."""
    from . import _forest_kernel

    if not _forest_kernel.available():
        return {"ok": False, "reason": "numba is not installed"}
    X = np.asarray(check_X, dtype=np.float32)
    try:
        forest = _forest_kernel.compile_estimator(estimator)
        ok, max_diff, same_labels = _agrees(forest.scores(X), estimator, task, X)
    except Exception as err:  # noqa: BLE001 - optional: say why it is off
        return {"ok": False, "reason": f"compilation failed: {type(err).__name__}: {err}"}
    report: dict[str, Any] = {
        "ok": ok,
        "engine": "numba",
        "checked_rows": int(len(X)),
        "max_abs_diff": max_diff,
        "same_labels": same_labels,
        "min_rows": ONNX_MAX_ROWS + 1,
    }
    if not ok:
        report["reason"] = "compiled predictions differ from scikit-learn's on the held-out rows"
    return report


class ForestPredictor(SklearnPredictor):
    """Verified ONNX for small batches; the verified compiled traversal (else scikit-learn) for large ones.

    Loaded from a version with ONNX, the scikit-learn forest and its compiled traversal are read in
    a background thread (skops and scikit-learn cost ~1.7 s to import and load here, ONNX 0.14 s):
    a serving replica answers small requests as soon as ONNX is up, and the first call that needs
    the forest (a large batch, a NaN) waits for it. A failed background load is raised there.
    """

    def __init__(
        self,
        estimator: Any,
        task: str,
        n_classes: int,
        onnx: Any = None,
        compiled: Any = None,
        *,
        pending: Future[tuple[Any, Any]] | None = None,
    ) -> None:
        super().__init__(estimator, task, n_classes)  # through the ``estimator`` setter
        self.onnx = onnx
        self._compiled = compiled
        self._pending = pending

    def _resolve(self) -> None:
        pending = self._pending
        if pending is not None:
            self._estimator, self._compiled = pending.result()
            self._pending = None

    @property
    def estimator(self) -> Any:
        self._resolve()
        return self._estimator

    @estimator.setter
    def estimator(self, value: Any) -> None:
        self._pending = None
        self._estimator = value

    @property
    def compiled(self) -> Any:
        self._resolve()
        return self._compiled

    def scores(self, X: np.ndarray) -> np.ndarray:
        if self.onnx is not None and len(X) <= ONNX_MAX_ROWS:
            return onnx_scores(self.onnx, X, self.task)
        if self.compiled is not None and np.isfinite(X).all():  # NaN routing stays scikit-learn's
            return self._all_classes(self.compiled.scores(X))
        return super().scores(X)

    def _all_classes(self, scores: np.ndarray) -> np.ndarray:
        """Probabilities over the schema's classes (a class absent from the training rows gets 0)."""
        classes = getattr(self.estimator, "classes_", None)
        if self.task != "classification" or classes is None or scores.shape[1] == self.n_classes:
            return scores
        full = np.zeros((len(scores), self.n_classes))
        full[:, np.asarray(classes, dtype=np.int64)] = scores
        return full


def _load_forest(folder: Path) -> tuple[Any, Any]:
    """The scikit-learn forest and its compiled traversal (None where not verified or turned off)."""
    estimator = load_estimator(folder)
    return estimator, _load_compiled(estimator, folder)


def _in_background(fn: Callable[[], tuple[Any, Any]]) -> Future[tuple[Any, Any]]:
    """Run ``fn`` in a daemon thread (it must not keep a process from exiting)."""
    future: Future[tuple[Any, Any]] = Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except BaseException as err:  # noqa: BLE001 - handed to whoever needs the forest
                future.set_exception(err)

    threading.Thread(target=run, name="raymlops-forest-load", daemon=True).start()
    return future


def _load_compiled(estimator: Any, folder: Path) -> Any:
    """The compiled traversal when registration verified it (and it is not turned off), else None."""
    if os.environ.get(COMPILED_ENV, "1").strip().lower() in ("0", "false", "no"):
        return None
    try:
        report = json.loads((folder / FAST_PATH_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not (
        isinstance(report, dict) and isinstance(report.get("compiled"), dict) and report["compiled"].get("ok")
    ):
        return None
    from . import _forest_kernel

    if not _forest_kernel.available():
        return None
    try:
        return _forest_kernel.compile_estimator(estimator)
    except Exception:  # noqa: BLE001 - a broken optional fast path must never stop scoring
        log.warning("the compiled forest of %s could not be built; scoring through scikit-learn", folder)
        return None


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
        report["compiled"] = check_compiled(estimator, schema.task, check_X)
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
        onnx = None
        if (folder / ONNX_FILE).exists():
            try:
                onnx = _onnx_session(str(folder / ONNX_FILE))
            except Exception:  # noqa: BLE001 - a broken optional fast path must never stop serving
                onnx = None
        if onnx is None:
            estimator, compiled = _load_forest(folder)
            return ForestPredictor(estimator, schema.task, schema.n_classes, None, compiled)
        pending = _in_background(lambda: _load_forest(folder))
        return ForestPredictor(None, schema.task, schema.n_classes, onnx, pending=pending)


KIND = RandomForestKind()
