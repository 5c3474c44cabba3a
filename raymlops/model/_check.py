"""Checking raw rows against a model's schema, column by column, without pandas.

Rows arrive as columns of many shapes: numpy arrays (serving), Arrow arrays (batch scoring),
pandas columns (library users), lists of raw JSON values. Each feature column becomes one numpy
array; a row that cannot be scored gets a reason naming its column and value, and the other rows
go on. Serving calls this for every request, so the common case (finite numbers) costs one
conversion per column and nothing per row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from raymlops.errors import InputError

from ._schema import TableSchema

__all__ = ["RowCheck", "UnknownCategory", "as_columns", "check_rows", "input_matrix"]

UnknownCategory = Literal["ignore", "reject"]
_MAX_SHOWN = 60


@dataclass
class RowCheck:
    """Which rows can be scored, why the others cannot, and the checked values.

    Attributes:
        n_rows: rows checked.
        valid: (n,) mask of the rows that can be scored.
        reasons: (n,) why each invalid row cannot be scored (None for valid rows); None when all are valid.
        numeric: (n, k) float64 values of the schema's numeric features (NaN where invalid).
        categorical: categorical feature -> (n,) category strings (None where missing).
    """

    n_rows: int
    valid: np.ndarray
    reasons: np.ndarray | None
    numeric: np.ndarray
    categorical: dict[str, np.ndarray]

    @property
    def n_rejected(self) -> int:
        return 0 if self.reasons is None else int((~self.valid).sum())

    @property
    def all_valid(self) -> bool:
        return self.reasons is None

    def reject(self, mask: np.ndarray, reasons: list[str]) -> None:
        """Mark more rows invalid (e.g. out of float32 range after preprocessing)."""
        if self.reasons is None:
            self.reasons = np.full(self.n_rows, None, dtype=object)
        for i, reason in zip(np.flatnonzero(mask), reasons, strict=True):
            if self.valid[i]:
                self.reasons[i] = reason
        self.valid = self.valid & ~mask

    def columns(self, schema: TableSchema, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The checked values per feature (numbers as float64, categories as strings), for ``rows``."""
        pick = slice(None) if rows is None else rows
        out: dict[str, np.ndarray] = {}
        j = 0
        for col in schema.features:
            if col in self.categorical:
                out[col] = self.categorical[col][pick]
            else:
                out[col] = self.numeric[pick, j]
                j += 1
        return out

    def first_error(self) -> str | None:
        if self.reasons is None or self.valid.all():
            return None
        i = int(np.flatnonzero(~self.valid)[0])
        return f"row {i}: {self.reasons[i]}"


def as_columns(data: Any) -> tuple[dict[str, Any], int]:
    """Columns and row count of a pandas DataFrame, a pyarrow Table or a mapping of columns."""
    if hasattr(data, "column_names") and hasattr(data, "num_rows"):  # pyarrow Table / RecordBatch
        return {name: data.column(name) for name in data.column_names}, int(data.num_rows)
    if hasattr(data, "columns") and hasattr(data, "iloc"):  # pandas DataFrame
        return {str(c): data[c] for c in data.columns}, len(data)
    if isinstance(data, Mapping):
        lengths = {len(v) for v in data.values()}
        if len(lengths) > 1:
            raise InputError(f"columns have different lengths: {sorted(lengths)}")
        return dict(data), (lengths.pop() if lengths else 0)
    raise InputError(f"cannot score {type(data).__name__}: give a DataFrame, an Arrow table or columns")


def _to_numpy(values: Any) -> np.ndarray:
    """Any column as a numpy array: numeric when it is numeric, else objects (None for missing)."""
    if isinstance(values, np.ndarray):
        return values
    module = type(values).__module__
    if module.startswith("pyarrow"):
        import pyarrow as pa
        import pyarrow.compute as pc

        kind = values.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            return np.asarray(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False))
        if pa.types.is_decimal(kind):
            return np.asarray(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False))
        return np.array(values.to_pylist(), dtype=object)
    if module.startswith("pandas"):
        dtype = values.dtype
        if dtype.kind in "fiu":
            return np.asarray(values.to_numpy())
        numeric = getattr(dtype, "kind", "O") in "fiub" or str(dtype).startswith(("int", "float", "uint"))
        if numeric and str(dtype).lower() not in ("bool", "boolean"):
            return np.asarray(values.to_numpy(dtype=np.float64, na_value=np.nan))
        return np.asarray(values.to_numpy(dtype=object, na_value=None), dtype=object)
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _parse_one(value: Any) -> float | None:
    """One raw value as a float; None when missing; raises ValueError when it is not a number."""
    if value is None:
        return None
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        return float(value)
    if isinstance(value, str):
        return float(value)
    raise ValueError(value)


def _numeric_column(values: Any) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """(float64 values with NaN for missing, [(row, bad value shown)]) for one numeric feature."""
    arr = _to_numpy(values)
    if arr.dtype.kind in "fiub":
        return arr.astype(np.float64, copy=False), []
    try:
        return np.asarray(arr, dtype=np.float64), []
    except (TypeError, ValueError, OverflowError):
        pass
    out = np.empty(len(arr), dtype=np.float64)
    bad: list[tuple[int, str]] = []
    for i, value in enumerate(arr):
        try:
            parsed = _parse_one(value)
        except (TypeError, ValueError, OverflowError):
            out[i] = math.nan
            bad.append((i, _show(value)))
            continue
        out[i] = math.nan if parsed is None else parsed
    return out, bad


def _category_column(values: Any) -> np.ndarray:
    """Category strings (str() of each value, as training stored them), None for missing."""
    arr = _to_numpy(values)
    if arr.dtype.kind in "fc":
        return np.array([None if math.isnan(v) else str(v) for v in arr.tolist()], dtype=object)
    if arr.dtype.kind in "iub":
        return np.array([str(v) for v in arr.tolist()], dtype=object)
    out = np.empty(len(arr), dtype=object)
    for i, v in enumerate(arr):
        missing = v is None or (isinstance(v, float) and math.isnan(v))
        out[i] = None if missing else (v if isinstance(v, str) else str(v))
    return out


class _Reasons:
    """Per-row reasons, allocated only when a row is bad; the first reason of a row wins."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.array: np.ndarray | None = None

    def note(self, mask: np.ndarray, text: str) -> None:
        if not mask.any():
            return
        if self.array is None:
            self.array = np.full(self.n, None, dtype=object)
        for i in np.flatnonzero(mask):
            if self.array[i] is None:
                self.array[i] = text

    def note_each(self, items: list[tuple[int, str]]) -> None:
        if not items:
            return
        if self.array is None:
            self.array = np.full(self.n, None, dtype=object)
        for i, text in items:
            if self.array[i] is None:
                self.array[i] = text


def _check_matrix(matrix: np.ndarray, schema: TableSchema) -> RowCheck:
    """A (n, n_features) numeric matrix in feature order: one finiteness test for all values."""
    values = np.asarray(matrix, dtype=np.float64)
    n = values.shape[0]
    finite = np.isfinite(values)
    if finite.all():
        return RowCheck(n, np.ones(n, dtype=bool), None, values, {})
    return _check_columns({f: values[:, j] for j, f in enumerate(schema.features)}, n, schema, "ignore")


def _check_columns(
    columns: Mapping[str, Any], n: int, schema: TableSchema, unknown_category: UnknownCategory
) -> RowCheck:
    reasons = _Reasons(n)
    # Column-major: each column is written in one contiguous copy (the feature plan reads it back
    # into the row-major float32 matrix the models take).
    numeric = np.empty((n, len(schema.numeric)), dtype=np.float64, order="F")
    categorical: dict[str, np.ndarray] = {}
    categorical_set = set(schema.categorical)
    j = 0
    for col in schema.features:
        if col in categorical_set:
            cats = _category_column(columns[col])
            reasons.note(np.array([v is None for v in cats], dtype=bool), f"{col}: null value")
            if unknown_category == "reject":
                known = set(map(str, schema.categories.get(col, [])))
                unknown = np.array([v is not None and v not in known for v in cats], dtype=bool)
                reasons.note(unknown, f"{col}: unknown category")
            categorical[col] = cats
            continue
        values, bad = _numeric_column(columns[col])
        if not bad and np.isfinite(values).all():  # the common case: one pass, nothing to note
            numeric[:, j] = values
            j += 1
            continue
        bad_rows = {i for i, _ in bad}
        null = np.isnan(values)
        if bad_rows:
            null[list(bad_rows)] = False
        reasons.note(null, f"{col}: null value")
        reasons.note_each([(i, f"{col}: {shown} is not a number") for i, shown in bad])
        reasons.note(~np.isfinite(values) & ~np.isnan(values), f"{col}: not a finite number")
        numeric[:, j] = values
        j += 1
    valid = np.ones(n, dtype=bool) if reasons.array is None else np.array([r is None for r in reasons.array])
    return RowCheck(n, valid, reasons.array, numeric, categorical)


def input_matrix(data: np.ndarray, schema: TableSchema) -> np.ndarray:
    """A (n, k) matrix of whole rows as the model's feature columns.

    Clients send either the model's features or the whole input row, constant columns that
    training left out included (``schema.inputs``); the second is picked apart by column position.
    """
    width = data.shape[1]
    if width == len(schema.features):
        return data
    if schema.inputs and width == len(schema.inputs):
        position = {c: i for i, c in enumerate(schema.inputs)}
        return data[:, [position[c] for c in schema.features]]
    expected = f"{len(schema.features)}"
    if schema.inputs and len(schema.inputs) != len(schema.features):
        expected += f" (or {len(schema.inputs)} with the constant columns {', '.join(schema.dropped)})"
    raise InputError(f"rows have {width} values; the model expects {expected}")


def check_rows(data: Any, schema: TableSchema, *, unknown_category: UnknownCategory = "ignore") -> RowCheck:
    """Mark the rows the model can score and say why the others cannot.

    Args:
        data: a pandas DataFrame, a pyarrow Table, a mapping of columns, or a (n, n_features)
            numeric matrix in feature order (models without categorical features).
        schema: the model's training schema.
        unknown_category: ``ignore`` scores an unseen category as "none of the known ones";
            ``reject`` quarantines the row.

    Raises:
        InputError: a feature column is missing from the whole input (nothing can be scored).
    """
    if unknown_category not in ("ignore", "reject"):
        raise InputError(f"unknown_category must be 'ignore' or 'reject', got {unknown_category!r}")
    if isinstance(data, np.ndarray) and data.ndim == 2:
        if schema.categorical:
            raise InputError("a numeric matrix cannot carry the model's categorical features")
        data = input_matrix(data, schema)
        return _check_matrix(data, schema)
    columns, n = as_columns(data)
    missing = [c for c in schema.features if c not in columns]
    if missing:
        raise InputError(f"missing feature column(s): {', '.join(missing)}")
    return _check_columns(columns, n, schema, unknown_category)
