"""What every model kind trains on and hands back to the pipeline.

Training data are Ray Datasets: the driver holds references and statistics, never the rows.
Data-parallel kinds (Keras, XGBoost) give each Ray Train worker its shard; kinds whose estimator
needs the whole split in memory (scikit-learn) get it from Ray's object store, materialized once
by a Ray task, inside the trial or task that fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import ray

from raymlops.errors import DataError

__all__ = ["SplitArrays", "TrainedModel", "TrainingData", "dataset_from_arrays", "row_share_mask"]

X_COLUMN = "x"
Y_COLUMN = "y"
_BLOCK_ROWS = 50_000
_MIN_BLOCKS = 8


def dataset_from_arrays(X: np.ndarray, y: np.ndarray, *, block_rows: int = _BLOCK_ROWS) -> Any:
    """A Dataset with a float32 tensor column ``x``, the encoded target ``y`` and ``row`` (its index)."""
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    X = np.ascontiguousarray(X, dtype=np.float32)
    n = len(X)
    parts = []
    # At least a few blocks even for small data: a new block order per epoch is what gives each
    # data-parallel worker a different shard every epoch.
    blocks = min(max(_MIN_BLOCKS, math.ceil(n / block_rows)), max(1, n))
    for idx in np.array_split(np.arange(n), blocks):
        columns = {X_COLUMN: ArrowTensorArray.from_numpy(X[idx]), Y_COLUMN: np.asarray(y)[idx], "row": idx}
        parts.append(pa.table(columns))
    return ray.data.from_arrow(parts)


def _collect(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        xs.append(np.asarray(batch[X_COLUMN], dtype=np.float32))
        ys.append(np.asarray(batch[Y_COLUMN]))
    if not xs:
        raise DataError("the split has no rows")
    return np.concatenate(xs), np.concatenate(ys)


_collect_remote = ray.remote(num_cpus=0.5)(_collect)


def row_share_mask(rows: np.ndarray, share: float, salt: int = 0) -> np.ndarray:
    """Rows whose (salted) hash falls in the lowest ``share`` of the range: a seeded sample.

    ``rows`` is the ``row`` column (the row's 64-bit content hash); the salt gives each forest
    tree its own sample. Mixing is splitmix64, so salts give independent samples.
    """
    h = rows.view(np.uint64) ^ np.uint64((salt * 0x9E3779B97F4A7C15) % 2**64)
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h = h ^ (h >> np.uint64(31))
    return h < np.uint64(min(int(share * 2**64), 2**64 - 1))


class _RowsBelow:
    def __init__(self, share: float) -> None:
        self.share = share

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = row_share_mask(np.asarray(batch["row"]), self.share)
        return {k: np.asarray(v)[keep] for k, v in batch.items()}


@dataclass
class SplitArrays:
    """One split as (X, y) arrays in Ray's object store; the driver holds only the reference.

    Reading them in a task or actor on the same node is zero-copy.
    """

    ref: Any

    @classmethod
    def of(cls, ds: Any) -> SplitArrays:
        return cls(_collect_remote.remote(ds))

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        X, y = ray.get(self.ref)
        return X, y


@dataclass
class TrainingData:
    """The preprocessed train and validation splits of one run, and what trainers need to know.

    Attributes:
        train, val: Ray Datasets with a float32 tensor column ``x`` and the encoded target ``y``:
            class indices 0..k-1 (so every kind agrees on the encoding) or float32 values.
        task: classification or regression.
        classes: the original labels, in index order (classification).
        feature_names: names of the columns of ``x``.
        n_train, n_val: rows in each split.
        y_mean, y_std: the training target's mean and spread (regression; 0 and 1 otherwise).
    """

    train: Any
    val: Any
    task: Literal["classification", "regression"]
    classes: list[Any] | None
    feature_names: list[str]
    n_train: int
    n_val: int
    y_mean: float = 0.0
    y_std: float = 1.0
    _arrays: dict[str, SplitArrays] = field(default_factory=dict, repr=False)

    @classmethod
    def from_arrays(
        cls,
        X_train: np.ndarray,
        y_train: np.ndarray,
        X_val: np.ndarray,
        y_val: np.ndarray,
        task: Literal["classification", "regression"],
        classes: list[Any] | None,
        feature_names: list[str],
    ) -> TrainingData:
        """In-memory arrays as training data (tests and small experiments)."""
        y = np.asarray(y_train, dtype=np.float64)
        regression = task == "regression" and len(y)
        return cls(
            train=dataset_from_arrays(X_train, y_train),
            val=dataset_from_arrays(X_val, y_val),
            task=task,
            classes=classes,
            feature_names=list(feature_names) or [f"f{i}" for i in range(np.asarray(X_train).shape[1])],
            n_train=len(X_train),
            n_val=len(X_val),
            y_mean=float(y.mean()) if regression else 0.0,
            y_std=float(y.std()) if regression and y.std() > 0 else 1.0,
        )

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.classes is not None else 0

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def arrays(self, split: Literal["train", "val"], *, max_rows: int | None = None) -> SplitArrays:
        """The split as arrays in the object store (materialized once, by a Ray task).

        Args:
            max_rows: for estimators that need the split in memory: beyond this many rows they get
                a seeded sample of about that size, drawn by row hash (the same rows whatever the
                layout), so a task's memory stays bounded whatever the data size.
        """
        rows = self.n_train if split == "train" else self.n_val
        share = 1.0 if max_rows is None or rows <= max_rows else max_rows / rows
        key = f"{split}:{share:.6g}"
        if key not in self._arrays:
            ds = self.train if split == "train" else self.val
            if share < 1.0:
                ds = ds.map_batches(
                    _RowsBelow(share), batch_format="numpy", batch_size=None, zero_copy_batch=True
                )
            self._arrays[key] = SplitArrays.of(ds)
        return self._arrays[key]

    def sampled(self, split: Literal["train", "val"], max_rows: int | None) -> bool:
        """Whether :meth:`arrays` with this cap hands out a sample rather than the whole split."""
        rows = self.n_train if split == "train" else self.n_val
        return max_rows is not None and rows > max_rows

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = {}  # object refs stay with the driver that owns them
        return state


@dataclass
class TrainedModel:
    """The winner of one model entry's search, refitted and ready to evaluate and register.

    Attributes:
        name, kind, workers: the model entry.
        best_params: the entry's params with the winning trial's sampled values.
        val_metric: the winner's validation metric (what picks the candidate across entries).
        estimator: the trained object the kind saves (a forest, a Keras model, a booster, ...).
        trials: one summary per Tune trial.
        extra: kind-specific facts for the summary (epochs, trees built, GPU use, ...).
        metadata: kind-specific facts recorded in the version (e.g. the estimator class).
    """

    name: str
    kind: str
    workers: int
    best_params: dict[str, Any]
    val_metric: float
    estimator: Any
    trials: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
