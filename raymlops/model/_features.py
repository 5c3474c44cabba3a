"""The fitted preprocessing of a model version, as plain numbers (``features.json``).

Training fits scalers and encoders on the training split (Ray Data aggregations, see
:mod:`raymlops.data.preprocess`) and folds what it learnt into one affine map per numeric column
and one category list per categorical column. That plan is all scoring needs: it is stored as
JSON (never a pickle: loading a model must not run code) and applied with a few numpy operations,
which costs microseconds for one row where Ray's ``transform_batch`` cost tens of milliseconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FEATURES_FILE", "FeaturePlan", "PlanStep"]

FEATURES_FILE = "features.json"
_FORMAT = 1


@dataclass(frozen=True)
class PlanStep:
    """One input column's part of the output matrix.

    Attributes:
        column: the raw input column.
        scale, shift: numeric columns map to ``value * scale + shift`` (NaN when training saw no value).
        categories: categorical columns map to one indicator column per category (unknown: all zero).
    """

    column: str
    scale: float = 1.0
    shift: float = 0.0
    categories: tuple[str, ...] | None = None

    @property
    def width(self) -> int:
        return 1 if self.categories is None else len(self.categories)

    def to_dict(self) -> dict[str, Any]:
        if self.categories is not None:
            return {"column": self.column, "onehot": list(self.categories)}
        return {"column": self.column, "affine": [_finite_or_none(self.scale), _finite_or_none(self.shift)]}


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _step_from_dict(raw: Any) -> PlanStep:
    if not isinstance(raw, dict) or not isinstance(raw.get("column"), str):
        raise ValueError(f"{FEATURES_FILE}: each step needs a string 'column', got {raw!r}")
    if set(raw) == {"column", "onehot"}:
        cats = raw["onehot"]
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            raise ValueError(f"{FEATURES_FILE}: onehot of {raw['column']!r} must be a list of strings")
        return PlanStep(raw["column"], categories=tuple(cats))
    if set(raw) == {"column", "affine"}:
        pair = raw["affine"]
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"{FEATURES_FILE}: affine of {raw['column']!r} must be [scale, shift]")
        nums = [float("nan") if v is None else v for v in pair]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in nums):
            raise ValueError(f"{FEATURES_FILE}: affine of {raw['column']!r} must hold numbers")
        return PlanStep(raw["column"], scale=float(nums[0]), shift=float(nums[1]))
    raise ValueError(f"{FEATURES_FILE}: step {raw!r} must have 'column' and one of 'affine', 'onehot'")


#: Rows from which the affine map runs as one compiled pass (batch scoring); below it, numpy.
_COMPILED_ROWS = 16_384
_AFFINE: Any = None


def _affine_kernel() -> Any:
    """``out = float32(x * scale + shift)`` in one pass, or None without numba.

    numpy needs three passes and two float64 temporaries (26 MB each for a 65,536 x 50 batch);
    this reads each value once and writes the row-major float32 matrix the models read. Numba
    compiles without fast-math, so nothing is fused or reordered: the result equals numpy's to
    the bit (tested).
    """
    global _AFFINE
    if _AFFINE is None:
        try:
            import numba
        except ImportError:
            _AFFINE = False
            return None

        @numba.njit(nogil=True, cache=True)
        def affine(  # pragma: no cover - compiled
            x: np.ndarray, scale: np.ndarray, shift: np.ndarray, out: np.ndarray
        ) -> None:
            n, k = x.shape
            for i in range(n):
                for j in range(k):
                    out[i, j] = x[i, j] * scale[j] + shift[j]

        _AFFINE = affine
    return _AFFINE or None


def _affine_float32(numeric: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``(numeric * scale + shift).astype(float32)``, row-major, compiled for large batches."""
    kernel = _affine_kernel() if numeric.shape[0] >= _COMPILED_ROWS else None
    if kernel is None:
        return (numeric * scale + shift).astype(np.float32, order="C")
    out = np.empty(numeric.shape, dtype=np.float32)
    kernel(numeric, scale, shift, out)
    return out


@dataclass
class FeaturePlan:
    """Raw feature columns to one float32 matrix, in the model's feature order.

    Attributes:
        steps: one step per feature, in the schema's feature order.
    """

    steps: list[PlanStep]
    _numeric_pos: np.ndarray = field(init=False, repr=False)
    _scale: np.ndarray = field(init=False, repr=False)
    _shift: np.ndarray = field(init=False, repr=False)
    _onehot: list[tuple[str, int, dict[str, int]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        positions, at = [], 0
        for step in self.steps:
            positions.append(at)
            at += step.width
        self.n_out = at
        numeric = [(p, s) for p, s in zip(positions, self.steps, strict=True) if s.categories is None]
        self.numeric_columns = [s.column for _, s in numeric]
        self._numeric_pos = np.array([p for p, _ in numeric], dtype=np.int64)
        self._scale = np.array([s.scale for _, s in numeric], dtype=np.float64)
        self._shift = np.array([s.shift for _, s in numeric], dtype=np.float64)
        self._identity = bool(np.all(self._scale == 1.0) and np.all(self._shift == 0.0))
        self._onehot = [
            (s.column, p, {c: i for i, c in enumerate(s.categories)})
            for p, s in zip(positions, self.steps, strict=True)
            if s.categories is not None
        ]

    @property
    def feature_names(self) -> list[str]:
        """Names of the output columns: the numeric column, or ``column=category`` per indicator."""
        names: list[str] = []
        for step in self.steps:
            if step.categories is None:
                names.append(step.column)
            else:
                names.extend(f"{step.column}={c}" for c in step.categories)
        return names

    def apply(self, numeric: np.ndarray, categorical: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The float32 model input for checked rows.

        Args:
            numeric: (n, k) float64 values of :attr:`numeric_columns`, in that order.
            categorical: column -> (n,) array of category strings (None for missing).
        """
        n = numeric.shape[0]
        if not self._onehot:
            if self._identity:
                return numeric.astype(np.float32, order="C")
            return _affine_float32(numeric, self._scale, self._shift)
        out = np.zeros((n, self.n_out), dtype=np.float32)
        if len(self._numeric_pos):
            out[:, self._numeric_pos] = numeric * self._scale + self._shift
        for column, start, lookup in self._onehot:
            codes = _codes((categorical or {})[column], lookup)
            hit = codes >= 0
            out[np.flatnonzero(hit), start + codes[hit]] = 1.0
        return out

    def to_json(self) -> str:
        return json.dumps({"format": _FORMAT, "steps": [s.to_dict() for s in self.steps]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> FeaturePlan:
        raw = json.loads(text)
        if (
            not isinstance(raw, dict)
            or raw.get("format") != _FORMAT
            or not isinstance(raw.get("steps"), list)
        ):
            raise ValueError(f"{FEATURES_FILE}: not a raymlops feature plan (format {_FORMAT})")
        return cls([_step_from_dict(s) for s in raw["steps"]])


def _codes(values: np.ndarray, lookup: dict[str, int]) -> np.ndarray:
    """Category index per value (-1 for unknown or missing); one dict lookup per distinct value."""
    n = len(values)
    if n <= 64:
        return np.fromiter((lookup.get(v, -1) if v is not None else -1 for v in values), np.int64, n)
    present = np.array([v is not None for v in values], dtype=bool)
    codes = np.full(n, -1, dtype=np.int64)
    if present.any():
        uniques, inverse = np.unique(values[present].astype(str), return_inverse=True)
        mapped = np.array([lookup.get(str(u), -1) for u in uniques], dtype=np.int64)
        codes[present] = mapped[inverse]
    return codes
