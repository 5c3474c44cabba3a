"""A registered model as one object: schema checks, preprocessing and prediction.

Batch scoring (``score/``), online serving (``serve/``), monitoring and the gate's champion
re-scoring all load models through :class:`ModelBundle`, so a row is checked, transformed and
predicted by the same code wherever it arrives.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raymlops.data.preprocess import FeaturePipeline
from raymlops.data.schema import TableSchema
from raymlops.errors import InputError
from raymlops.train.onnx import onnx_scores

__all__ = ["ModelBundle", "RowCheck", "InputError"]

SCHEMA_FILE = "schema.json"
PREPROCESSOR_FILE = "preprocessor.pkl"
FOREST_FILE = "model.joblib"
ONNX_FILE = "model.onnx"
FAST_PATH_FILE = "fast_path.json"
# onnxruntime wins by ~1000x on one row (no joblib start-up) but loses to scikit-learn's
# vectorised traversal on large batches (measured in benchmarks/train_forest.py).
ONNX_MAX_ROWS = 4096


@dataclass
class RowCheck:
    """Outcome of checking rows against a model's schema.

    ``valid`` marks the rows that can be scored; ``reasons`` holds, for every other row, why not.
    """

    frame: pd.DataFrame
    valid: np.ndarray
    reasons: np.ndarray

    @property
    def n_rejected(self) -> int:
        return int((~self.valid).sum())


class ModelBundle:
    """A fitted model with everything needed to score raw rows.

    Args:
        kind: "random_forest" or "keras".
        estimator: the fitted model.
        features: the fitted preprocessing pipeline.
        schema: the training table's schema.
        metadata: the version's metadata.json (empty before registration).
    """

    def __init__(
        self,
        kind: str,
        estimator: Any,
        features: FeaturePipeline,
        schema: TableSchema,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.estimator = estimator
        self.features = features
        self.schema = schema
        self.metadata = metadata or {}
        self._onnx: Any = None

    # ---- persistence -------------------------------------------------------------------------
    def save(self, folder: Path, check_X: np.ndarray | None = None) -> list[str]:
        """Write model files into ``folder`` (a staging folder later registered as one version).

        Args:
            folder: where to write.
            check_X: held-out rows (transformed); when given, a forest is also compiled to ONNX
                and the compiled form is kept only if it predicts the same on these rows.
        """
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SCHEMA_FILE).write_text(self.schema.to_json())
        with open(folder / PREPROCESSOR_FILE, "wb") as fh:
            pickle.dump(self.features, fh)
        written = [SCHEMA_FILE, PREPROCESSOR_FILE]
        if self.kind == "random_forest":
            import joblib

            joblib.dump(self.estimator, folder / FOREST_FILE)
            written.append(FOREST_FILE)
            if check_X is not None:
                written.extend(self._save_onnx(folder, check_X))
        elif self.kind == "keras":
            from raymlops.train.keras import save_keras

            written.extend(save_keras(self.estimator, folder))
        else:
            raise ValueError(f"unknown model kind {self.kind!r}")
        return written

    @classmethod
    def from_dir(cls, folder: Path, metadata: dict[str, Any] | None = None) -> ModelBundle:
        """Load from a local folder whose sha256 sums were already verified."""
        folder = Path(folder)
        if metadata is None and (folder / "metadata.json").exists():
            metadata = json.loads((folder / "metadata.json").read_text())
        metadata = metadata or {}
        schema = TableSchema.from_dict(json.loads((folder / SCHEMA_FILE).read_text()))
        with open(folder / PREPROCESSOR_FILE, "rb") as fh:
            features = pickle.load(fh)  # noqa: S301 - sha256-verified file written by raymlops
        kind = metadata.get("kind") or ("keras" if (folder / "model.keras").exists() else "random_forest")
        if kind == "random_forest":
            import joblib

            estimator = joblib.load(folder / FOREST_FILE)
        else:
            from raymlops.train.keras import load_keras

            estimator = load_keras(folder)
        bundle = cls(kind, estimator, features, schema, metadata)
        bundle._load_fast_path(folder)
        return bundle

    @classmethod
    def load(cls, ref: str, store: str | None = None) -> ModelBundle:
        """Resolve ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS`` in the store, verify and load it."""
        from raymlops.registry import ModelStore

        version, path = ModelStore(store).fetch(ref)
        return cls.from_dir(path, version.metadata)

    def _save_onnx(self, folder: Path, check_X: np.ndarray) -> list[str]:
        """Compile the forest to ONNX; keep it only when it agrees with scikit-learn on ``check_X``."""
        from raymlops.train.onnx import compile_forest

        compiled = compile_forest(self.estimator, self.schema.task, check_X)
        (folder / FAST_PATH_FILE).write_text(json.dumps(compiled.report, indent=2))
        if compiled.model_bytes is None:
            return [FAST_PATH_FILE]
        (folder / ONNX_FILE).write_bytes(compiled.model_bytes)
        self._load_fast_path(folder)
        return [FAST_PATH_FILE, ONNX_FILE]

    def _load_fast_path(self, folder: Path) -> None:
        onnx_file = folder / ONNX_FILE
        if self.kind == "random_forest" and onnx_file.exists():
            try:
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 1
                self._onnx = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
            except Exception:  # a broken optional fast path must never stop the model from serving
                self._onnx = None

    # ---- identity ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.metadata.get("name", "model"))

    @property
    def version(self) -> int | None:
        v = self.metadata.get("version")
        return int(v) if v is not None else None

    @property
    def classes(self) -> list[Any] | None:
        return self.schema.classes

    @property
    def output_columns(self) -> list[str]:
        if self.schema.task == "classification":
            return ["prediction", *[f"proba_{c}" for c in self.classes or []]]
        return ["prediction"]

    # ---- input checks ------------------------------------------------------------------------
    def missing_columns(self, columns: list[str]) -> list[str]:
        present = set(columns)
        return [c for c in self.schema.features if c not in present]

    def check_rows(self, frame: pd.DataFrame, *, unknown_category: str = "ignore") -> RowCheck:
        """Mark the rows the model can score and say why the others cannot.

        Raises:
            InputError: a feature column is missing from the whole input (nothing can be scored).
        """
        missing = self.missing_columns(list(frame.columns))
        if missing:
            raise InputError(f"missing feature column(s): {', '.join(missing)}")
        n = len(frame)
        fast = self._check_all_numeric(frame)
        if fast is not None:
            return fast
        reasons = np.full(n, None, dtype=object)
        invalid = np.zeros(n, dtype=bool)  # rows with a reason, kept alongside so no per-row Python loop
        columns: dict[str, pd.Series] = {}  # one frame built at the end: inserting column by column is slow
        for col in self.schema.features:
            series = frame[col]
            null = series.isna().to_numpy()
            _note(reasons, null, f"{col}: null value")
            invalid |= null
            if col in self.schema.categorical:
                as_text = series.astype(str).where(~null, None)
                if unknown_category == "reject":
                    known = set(self.schema.categories.get(col, []))
                    unknown = (~null) & ~as_text.isin(known).to_numpy()
                    _note(reasons, unknown, f"{col}: unknown category")
                    invalid |= unknown
                columns[col] = as_text
            else:
                if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
                    numeric = series.astype("float64")
                else:
                    numeric = pd.to_numeric(series, errors="coerce")
                    bad = (~null) & numeric.isna().to_numpy()
                    if bad.any():
                        invalid |= bad
                        for i in np.flatnonzero(bad):
                            if reasons[i] is None:
                                reasons[i] = f"{col}: {series.iloc[i]!r} is not a number"
                infinite = ~np.isfinite(numeric.to_numpy(dtype="float64", na_value=0.0))
                _note(reasons, infinite, f"{col}: not a finite number")
                invalid |= infinite
                columns[col] = numeric
        if columns:
            clean = pd.DataFrame(columns, index=frame.index, copy=False)
        else:
            clean = pd.DataFrame(index=frame.index)
        return RowCheck(frame=clean, valid=~invalid, reasons=reasons)

    def _check_all_numeric(self, frame: pd.DataFrame) -> RowCheck | None:
        """One vectorised check when every feature is a numeric column and every value is finite.

        The common case (serving, clean batches) then costs one array conversion instead of
        several pandas operations per column; anything else returns None and takes the general
        path, which names each bad row's reason.
        """
        if self.schema.categorical:
            return None
        features = self.schema.features
        dtypes = frame.dtypes
        for col in features:
            dt = dtypes[col]
            if not pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt):
                return None
        values = frame[features].to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.isfinite(values).all():
            return None
        n = len(frame)
        clean = pd.DataFrame(values, columns=features, index=frame.index, copy=False)
        return RowCheck(frame=clean, valid=np.ones(n, dtype=bool), reasons=np.full(n, None, dtype=object))

    # ---- prediction --------------------------------------------------------------------------
    def transform(self, clean: pd.DataFrame) -> np.ndarray:
        return self.features.transform(clean)

    def scores(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (n, k) or predictions (n,), on the fastest path that is available."""
        if len(X) == 0:
            k = len(self.classes or [])
            return np.zeros((0, k)) if self.schema.task == "classification" else np.zeros(0)
        if self.kind == "random_forest":
            if self._onnx is not None and len(X) <= ONNX_MAX_ROWS:
                return onnx_scores(self._onnx, X, self.schema.task)
            est = self.estimator
            return est.predict_proba(X) if self.schema.task == "classification" else est.predict(X)
        from raymlops.train.keras import keras_scores

        return keras_scores(self.estimator, X)

    def predictions_frame(self, scores: np.ndarray, index: pd.Index | None = None) -> pd.DataFrame:
        if self.schema.task == "classification":
            classes = np.asarray(self.classes, dtype=object)
            out = {"prediction": classes[np.asarray(scores).argmax(axis=1)]}
            for j, c in enumerate(self.classes or []):
                out[f"proba_{c}"] = scores[:, j].astype(np.float64)
            frame = pd.DataFrame(out, index=index)
            frame["prediction"] = frame["prediction"].astype(_label_dtype(self.classes or []))
            return frame
        return pd.DataFrame({"prediction": np.asarray(scores, dtype=np.float64).reshape(-1)}, index=index)

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Predictions for rows that already passed :meth:`check_rows` (strict: raises otherwise)."""
        check = self.check_rows(frame)
        if check.n_rejected:
            first = int(np.flatnonzero(~check.valid)[0])
            raise InputError(f"row {first}: {check.reasons[first]}")
        X = self.transform(check.frame)
        return self.predictions_frame(self.scores(X), index=frame.index)


def _note(reasons: np.ndarray, mask: np.ndarray, text: str) -> None:
    for i in np.flatnonzero(mask):
        if reasons[i] is None:
            reasons[i] = text


def _label_dtype(classes: list[Any]) -> Any:
    if classes and all(isinstance(c, (bool, np.bool_)) for c in classes):
        return bool
    if classes and all(isinstance(c, (int, np.integer)) for c in classes):
        return np.int64
    if classes and all(isinstance(c, (float, np.floating, int, np.integer)) for c in classes):
        return np.float64
    return object
