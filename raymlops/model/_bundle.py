"""A model version as one object: the one path from raw rows to checked rows and predictions.

Batch scoring, online serving, monitoring, the gate's champion re-scoring, explanations and the
MLflow export all score through :meth:`ModelBundle.score`, so a row is checked, transformed and
predicted by the same code wherever it arrives, whatever the model kind.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raymlops.errors import InputError, TrustError

from ._check import RowCheck, UnknownCategory, check_rows
from ._features import FEATURES_FILE, FeaturePlan
from ._kinds import Predictor, get_kind
from ._outputs import PREDICTION, label_dtype, labels_from_scores, output_columns, proba_column
from ._schema import TableSchema

__all__ = ["LEGACY_PICKLE_ENV", "SCHEMA_FILE", "ModelBundle", "ScoredRows"]

log = logging.getLogger("raymlops")

SCHEMA_FILE = "schema.json"
#: Set to 1 to read versions written before model files became pickle-free (trusted stores only).
LEGACY_PICKLE_ENV = "RAYMLOPS_ALLOW_LEGACY_PICKLE"
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class ScoredRows:
    """The outcome of scoring a batch of raw rows.

    Attributes:
        check: which rows were valid, why the others were not, and the checked values.
        scores: for the valid rows only: probabilities (m, k) or predicted values (m,).
        labels: for the valid rows only: the predicted label or value.
        schema: the model's schema (for output names and types).
    """

    check: RowCheck
    scores: np.ndarray
    labels: np.ndarray
    schema: TableSchema

    @property
    def valid(self) -> np.ndarray:
        return self.check.valid

    @property
    def n_rows(self) -> int:
        return self.check.n_rows

    @property
    def n_rejected(self) -> int:
        return self.check.n_rejected

    @property
    def probabilities(self) -> np.ndarray | None:
        return self.scores if self.schema.task == "classification" else None

    def output_arrays(self) -> dict[str, np.ndarray]:
        """Output column -> values for the valid rows, named as every scoring path names them."""
        out: dict[str, np.ndarray] = {PREDICTION: self.labels}
        if self.schema.task == "classification":
            for j, c in enumerate(self.schema.classes or []):
                out[proba_column(c)] = self.scores[:, j].astype(np.float64, copy=False)
        return out

    def to_arrow(self) -> Any:
        import pyarrow as pa

        return pa.table(self.output_arrays(), schema=prediction_schema(self.schema))

    def to_frame(self, index: Any = None) -> Any:
        import pandas as pd

        return pd.DataFrame(self.output_arrays(), index=index)


def prediction_schema(schema: TableSchema) -> Any:
    """The Arrow types of the output columns (``raymlops score`` writes them to Parquet)."""
    import pyarrow as pa

    if schema.task != "classification":
        return pa.schema([pa.field(PREDICTION, pa.float64())])
    dtype = label_dtype(list(schema.classes or []))
    label = {np.bool_: pa.bool_(), np.int64: pa.int64(), np.float64: pa.float64()}.get(dtype, pa.string())
    fields = [pa.field(PREDICTION, label)]
    fields += [pa.field(proba_column(c), pa.float64()) for c in schema.classes or []]
    return pa.schema(fields)


def _legacy_allowed(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return os.environ.get(LEGACY_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


def check_pickle_free(
    folder: str | Path, *, allow_legacy_pickle: bool | None = None, name: str | None = None
) -> bool:
    """Refuse a version in the old pickled format unless the user allowed it; True when it is one.

    Reads no model bytes, so a command can refuse before it starts Ray or any worker.

    Args:
        folder: the version's verified files.
        allow_legacy_pickle: the user's flag (default ``$RAYMLOPS_ALLOW_LEGACY_PICKLE``).
        name: how the message names the version (``NAME:VERSION``; default the folder).

    Raises:
        TrustError: the version holds pickled model files and they were not allowed.
    """
    folder = Path(folder)
    if (folder / FEATURES_FILE).exists() or not (folder / "preprocessor.pkl").exists():
        return False
    if not _legacy_allowed(allow_legacy_pickle):
        raise TrustError(
            f"{name or folder} was written by an older raymlops with pickled model files, which can run "
            "code when loaded; retrain it, or load it from a store you trust with "
            f"--allow-legacy-pickle (or {LEGACY_PICKLE_ENV}=1)"
        )
    return True


class ModelBundle:
    """A model with everything needed to score raw rows: schema, feature plan, predictor, metadata.

    Args:
        kind: the model kind (``keras``, ``random_forest``, ``sklearn``, ``xgboost``, ...).
        predictor: turns feature matrices into scores (see :class:`~raymlops.model.Predictor`).
        plan: the fitted preprocessing.
        schema: the training table's schema.
        metadata: the version's metadata.json (empty before registration).
        estimator: the trained object itself, when the bundle was made from training (to save it).
    """

    def __init__(
        self,
        kind: str,
        predictor: Predictor,
        plan: FeaturePlan,
        schema: TableSchema,
        metadata: dict[str, Any] | None = None,
        estimator: Any = None,
    ) -> None:
        if plan.numeric_columns != schema.numeric:
            raise TrustError(
                f"feature plan columns {plan.numeric_columns[:5]}... do not match the schema's numeric "
                f"features {schema.numeric[:5]}..."
            )
        self.kind = kind
        self.predictor = predictor
        self.plan = plan
        self.schema = schema
        self.metadata = metadata or {}
        self.estimator = estimator

    # ---- building and persistence ----------------------------------------------------------------
    @classmethod
    def from_estimator(cls, kind: str, estimator: Any, plan: FeaturePlan, schema: TableSchema) -> ModelBundle:
        """A bundle over a model that was just trained (not yet saved)."""
        return cls(kind, get_kind(kind).wrap(estimator, schema), plan, schema, estimator=estimator)

    def save(self, folder: Path, check_X: np.ndarray | None = None) -> dict[str, Any]:
        """Write the version's model files into a staging folder; returns the fast-path record.

        Args:
            folder: where to write (later registered as one version).
            check_X: held-out rows (transformed); a kind with a compiled fast path keeps it only
                when it predicts the same on these rows.
        """
        if self.estimator is None:
            raise RuntimeError("only a bundle made from a trained estimator can be saved")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SCHEMA_FILE).write_text(self.schema.to_json())
        (folder / FEATURES_FILE).write_text(self.plan.to_json())
        saved = get_kind(self.kind).save(self.estimator, folder, schema=self.schema, check_X=check_X)
        return saved.fast_path

    @classmethod
    def from_dir(
        cls,
        folder: str | Path,
        metadata: dict[str, Any] | None = None,
        *,
        allow_legacy_pickle: bool | None = None,
        threads: int | None = None,
    ) -> ModelBundle:
        """Load a version from a local folder whose files the registry has verified.

        Args:
            folder: the version's files.
            metadata: its metadata.json (read from the folder when not given).
            allow_legacy_pickle: read a version written before model files became pickle-free
                (default ``$RAYMLOPS_ALLOW_LEGACY_PICKLE``); only for stores you trust.
            threads: CPU threads the model may use when scoring (default: the library's own).
        """
        folder = Path(folder)
        if metadata is None and (folder / "metadata.json").exists():
            metadata = json.loads((folder / "metadata.json").read_text())
        metadata = metadata or {}
        if check_pickle_free(folder, allow_legacy_pickle=allow_legacy_pickle):
            from ._legacy import load_legacy

            log.warning("loading %s through pickle (legacy version, --allow-legacy-pickle)", folder)
            return load_legacy(cls, folder, metadata)
        schema = TableSchema.from_dict(json.loads((folder / SCHEMA_FILE).read_text()))
        plan = FeaturePlan.from_json((folder / FEATURES_FILE).read_text())
        kind = str(metadata.get("kind") or "")
        predictor = get_kind(kind).load(folder, metadata, schema=schema, threads=threads)
        return cls(kind, predictor, plan, schema, metadata)

    @classmethod
    def load(
        cls,
        ref: str,
        store: str | None = None,
        *,
        allow_legacy_pickle: bool | None = None,
        threads: int | None = None,
    ) -> ModelBundle:
        """Resolve ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS`` in the store, verify and load it."""
        from raymlops.registry import ModelStore

        version, path = ModelStore(store).fetch(ref)
        return cls.from_dir(path, version.metadata, allow_legacy_pickle=allow_legacy_pickle, threads=threads)

    # ---- identity --------------------------------------------------------------------------------
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
        return output_columns(self.schema)

    def missing_columns(self, columns: list[str]) -> list[str]:
        present = set(columns)
        return [c for c in self.schema.features if c not in present]

    # ---- the one scoring path ----------------------------------------------------------------------
    def check(self, data: Any, *, unknown_category: UnknownCategory = "ignore") -> RowCheck:
        """Which rows can be scored and why the others cannot (see :func:`check_rows`)."""
        return check_rows(data, self.schema, unknown_category=unknown_category)

    def transform(self, check: RowCheck) -> np.ndarray:
        """The float32 model input for the valid rows of ``check``; rows out of float32 range are
        rejected on ``check`` (finite in the client's float64, infinite for the model)."""
        numeric = check.numeric if check.all_valid else check.numeric[check.valid]
        cats = check.categorical
        if not check.all_valid and cats:
            cats = {c: v[check.valid] for c, v in cats.items()}
        X = self.plan.apply(numeric, cats)
        finite = np.isfinite(X).all(axis=1)
        if finite.all():
            return X
        positions = np.flatnonzero(check.valid)[~finite]
        mask = np.zeros(check.n_rows, dtype=bool)
        mask[positions] = True
        check.reject(mask, [self._overflow_reason(check.numeric[p]) for p in positions])
        return X[finite]

    def _overflow_reason(self, row: np.ndarray) -> str:
        for col, value in zip(self.schema.numeric, row, strict=True):
            if abs(float(value)) > _FLOAT32_MAX:
                return f"{col}: {float(value)!r} is out of range for the model (float32)"
        return "a value is out of range for the model (not finite after preprocessing)"

    def scores(self, X: np.ndarray) -> np.ndarray:
        """Probabilities (n, k) or predictions (n,) for feature matrices from :meth:`transform`."""
        if len(X) == 0:
            k = self.schema.n_classes
            return np.zeros((0, k)) if self.schema.task == "classification" else np.zeros(0)
        return self.predictor.scores(X)

    def score(self, data: Any, *, unknown_category: UnknownCategory = "ignore") -> ScoredRows:
        """Check raw rows, transform and score the valid ones: the path every caller takes.

        Args:
            data: a pandas DataFrame, a pyarrow Table, a mapping of columns or a numeric matrix.
            unknown_category: ``ignore`` or ``reject`` an unseen category.

        Raises:
            InputError: a feature column is missing from the whole input.
        """
        check = self.check(data, unknown_category=unknown_category)
        X = self.transform(check)
        scores = self.scores(X)
        return ScoredRows(check, scores, labels_from_scores(self.schema, scores), self.schema)

    def predict_frame(self, frame: Any) -> Any:
        """Predictions as a pandas DataFrame, refusing any row that cannot be scored."""
        scored = self.score(frame)
        error = scored.check.first_error()
        if error is not None:
            raise InputError(error)
        return scored.to_frame(index=getattr(frame, "index", None))
