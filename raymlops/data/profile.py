"""One distributed pass over the source: the statistics every check, the split and the fingerprint need.

Each block of the source becomes a :class:`SourceProfile` inside a Ray task (``map_batches``); the
driver merges the profiles, which are a few kilobytes whatever the data size. What the pass keeps
per column: row, null and non-numeric counts with the first offending values and the file they
came from, min/max/sum/sum of squares of the numeric values, and the distinct values (up to a cap)
of the columns whose categories or classes matter. Per row it computes a 64-bit content hash (of
the split key column, or of the whole row) that gives the split its buckets and the data its
fingerprint, both independent of how the rows are laid out in blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = [
    "BUCKETS",
    "MAX_DISTINCT",
    "PATH_COLUMN",
    "ColumnProfile",
    "ProfileSpec",
    "SourceProfile",
    "row_hashes",
]

BUCKETS = 4096  # split buckets per class: the top 12 bits of a row's hash
MAX_DISTINCT = 1000  # distinct values kept per tracked column; beyond it the column is "many-valued"
MAX_CLASS_HISTOGRAMS = 64  # targets with more distinct values get one histogram (regression)
PATH_COLUMN = "path"  # Ray Data's include_paths column: the file each row came from
_EXAMPLES = 3


@dataclass(frozen=True)
class ProfileSpec:
    """What the pass must know before it reads a row.

    Attributes:
        target: the target column.
        distinct: columns whose distinct values are counted (target, categorical candidates).
        key: the split key column, or None to hash the whole row.
        hash_columns: the columns of the whole-row hash (None: every column but the path).
    """

    target: str
    distinct: frozenset[str] = frozenset()
    key: str | None = None
    hash_columns: tuple[str, ...] | None = None


@dataclass
class ColumnProfile:
    """Mergeable statistics of one column.

    Attributes:
        kind: the Arrow type family seen: int, float, bool, string or null (merged to the widest).
        count, nulls: rows and missing values.
        non_numeric: non-null values that do not parse as numbers.
        bad: up to three (value, file, row) examples of those values; the row is known for
            in-memory sources (for files, :func:`raymlops.data.validate.locate` finds it).
        first_null: (file, row) of the first missing value (None when there is none).
        n_num, min, max, total, total_sq: the values that parse as numbers.
        integral: every numeric value is a whole number (task inference).
        distinct: value -> count, for tracked columns; None once there are more than MAX_DISTINCT.
    """

    kind: str = "null"
    count: int = 0
    nulls: int = 0
    non_numeric: int = 0
    bad: list[tuple[str, str | None, int | None]] = field(default_factory=list)
    first_null: tuple[str | None, int | None] | None = None
    n_num: int = 0
    min: float = math.inf
    max: float = -math.inf
    total: float = 0.0
    total_sq: float = 0.0
    integral: bool = True
    distinct: dict[Any, int] | None = None

    def merge(self, other: ColumnProfile) -> ColumnProfile:
        out = ColumnProfile(
            kind=_wider(self.kind, other.kind),
            count=self.count + other.count,
            nulls=self.nulls + other.nulls,
            non_numeric=self.non_numeric + other.non_numeric,
            bad=(self.bad + other.bad)[:_EXAMPLES],
            first_null=self.first_null if self.first_null is not None else other.first_null,
            n_num=self.n_num + other.n_num,
            min=min(self.min, other.min),
            max=max(self.max, other.max),
            total=self.total + other.total,
            total_sq=self.total_sq + other.total_sq,
            integral=self.integral and other.integral,
        )
        if self.distinct is not None and other.distinct is not None:
            merged = dict(self.distinct)
            for value, n in other.distinct.items():
                merged[value] = merged.get(value, 0) + n
            out.distinct = merged if len(merged) <= MAX_DISTINCT else None
        return out

    @property
    def constant(self) -> bool:
        """At most one distinct non-null value (an all-null column counts as constant)."""
        if self.distinct is not None:
            return len(self.distinct) <= 1
        if self.non_numeric:
            return False
        return self.n_num == 0 or self.min == self.max


_ORDER = {"null": 0, "bool": 1, "int": 2, "float": 3, "string": 4}


def _wider(a: str, b: str) -> str:
    """The type family that holds both (null < bool < int < float < string)."""
    return max(a, b, key=_ORDER.__getitem__)


def _kind(arrow_type: pa.DataType) -> str:
    if pa.types.is_null(arrow_type):
        return "null"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float"
    if pa.types.is_dictionary(arrow_type):
        return _kind(arrow_type.value_type)
    return "string"


@dataclass
class SourceProfile:
    """Mergeable statistics of a whole source (or of one block of it).

    Attributes:
        rows: rows seen.
        columns: column name -> its profile, in the source's column order.
        hash_sum: sum of the rows' 64-bit content hashes modulo 2**64 (the fingerprint's content part).
        class_buckets: target value -> row counts per hash bucket (the stratified split's input).
        buckets: row counts per hash bucket over all rows (the plain split's input).
        files: rows per source file (empty for in-memory sources).
    """

    rows: int = 0
    columns: dict[str, ColumnProfile] = field(default_factory=dict)
    hash_sum: int = 0
    class_buckets: dict[Any, np.ndarray] | None = field(default_factory=dict)
    buckets: np.ndarray = field(default_factory=lambda: np.zeros(BUCKETS, dtype=np.int64))
    files: dict[str, int] = field(default_factory=dict)

    def merge(self, other: SourceProfile) -> SourceProfile:
        columns = dict(self.columns)
        for name, col in other.columns.items():
            columns[name] = columns[name].merge(col) if name in columns else col
        class_buckets: dict[Any, np.ndarray] | None = None
        if self.class_buckets is not None and other.class_buckets is not None:
            class_buckets = {k: v.copy() for k, v in self.class_buckets.items()}
            for value, counts in other.class_buckets.items():
                class_buckets[value] = class_buckets[value] + counts if value in class_buckets else counts
            if len(class_buckets) > MAX_CLASS_HISTOGRAMS:
                class_buckets = None
        files = dict(self.files)
        for path, n in other.files.items():
            files[path] = files.get(path, 0) + n
        return SourceProfile(
            rows=self.rows + other.rows,
            columns=columns,
            hash_sum=(self.hash_sum + other.hash_sum) % 2**64,
            class_buckets=class_buckets,
            buckets=self.buckets + other.buckets,
            files=files,
        )

    @classmethod
    def of_table(cls, table: pa.Table, spec: ProfileSpec, *, offset: int | None = None) -> SourceProfile:
        """The profile of one block (runs inside a Ray task); ``offset``: its first row's number."""
        paths = _paths(table)
        data = table.drop_columns([PATH_COLUMN]) if PATH_COLUMN in table.column_names else table
        columns = {
            name: _profile_column(data.column(name), name in spec.distinct, paths, offset)
            for name in data.column_names
        }
        hashes = row_hashes(data, spec)
        content = hashes if spec.key is None else row_hashes(data, ProfileSpec(target=spec.target))
        buckets = (hashes >> np.uint64(64 - 12)).astype(np.int64)
        files: dict[str, int] = {}
        if paths is not None:
            unique, counts = np.unique(paths.astype(str), return_counts=True)
            files = {str(p): int(n) for p, n in zip(unique, counts, strict=True)}
        return cls(
            rows=data.num_rows,
            columns=columns,
            hash_sum=int(content.sum(dtype=np.uint64)),
            class_buckets=_class_buckets(data, spec.target, buckets),
            buckets=np.bincount(buckets, minlength=BUCKETS),
            files=files,
        )


def _paths(table: pa.Table) -> np.ndarray | None:
    if PATH_COLUMN not in table.column_names:
        return None
    return np.asarray(table.column(PATH_COLUMN).to_pylist(), dtype=object)


def _class_buckets(data: pa.Table, target: str, buckets: np.ndarray) -> dict[Any, np.ndarray] | None:
    if target not in data.column_names:
        return {}
    values = data.column(target).to_pandas()
    if values.nunique(dropna=True) > MAX_CLASS_HISTOGRAMS:
        return None
    out = {}
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    for i, value in enumerate(uniques.tolist()):
        out[_plain(value)] = np.bincount(buckets[codes == i], minlength=BUCKETS)
    return out


def _plain(value: Any) -> Any:
    """A Python scalar (ints stay ints) so classes compare and serialise as users wrote them."""
    item = getattr(value, "item", None)
    value = item() if callable(item) and not isinstance(value, (str, bytes)) else value
    if isinstance(value, float) and value.is_integer():
        return value  # keep floats floats: the target's type is the user's
    return value


def _profile_column(
    column: pa.ChunkedArray, track: bool, paths: np.ndarray | None, offset: int | None
) -> ColumnProfile:
    kind = _kind(column.type)
    series = column.to_pandas()
    missing = series.isna().to_numpy()
    prof = ColumnProfile(kind=kind, count=len(series), nulls=int(missing.sum()))
    if prof.nulls:
        first = int(np.argmax(missing))
        prof.first_null = (_path(paths, first), None if offset is None else offset + first)
    if kind in ("int", "float", "bool"):
        numbers = series.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.zeros(len(series), dtype=bool)
    else:
        numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~missing & np.isnan(numbers)
        if kind == "string" and series.map(_is_nan_text).any():
            bad &= ~series.map(_is_nan_text).to_numpy(dtype=bool)
    prof.non_numeric = int(bad.sum())
    if prof.non_numeric:
        where = np.flatnonzero(bad)[:_EXAMPLES]
        prof.bad = [
            (repr(series.iloc[i]), _path(paths, i), None if offset is None else offset + int(i))
            for i in where
        ]
    finite = numbers[np.isfinite(numbers)]
    prof.n_num = len(finite)
    if prof.n_num:
        prof.min, prof.max = float(finite.min()), float(finite.max())
        prof.total, prof.total_sq = float(finite.sum()), float(np.square(finite).sum())
        prof.integral = bool(np.all(finite == np.round(finite)))
    if track or kind in ("string", "bool"):
        counts = series.value_counts(dropna=True)
        prof.distinct = (
            {_plain(v): int(n) for v, n in counts.items()} if len(counts) <= MAX_DISTINCT else None
        )
    return prof


def _path(paths: np.ndarray | None, i: int) -> str | None:
    return None if paths is None else str(paths[i])


def _is_nan_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "nan"


def row_hashes(table: pa.Table, spec: ProfileSpec) -> np.ndarray:
    """64-bit hash per row of the key column (or the whole row), independent of Arrow types.

    Numbers hash by value (an int column read as float from another file hashes the same), text by
    its characters, so the same rows give the same hashes whatever file, block or type inference
    they come through.
    """
    if spec.key is not None:
        names = [spec.key]
    else:
        names = list(spec.hash_columns or [n for n in table.column_names if n != PATH_COLUMN])
    frame = pd.DataFrame({name: _hashable(table.column(name)) for name in sorted(names)})
    return pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)


def _hashable(column: pa.ChunkedArray) -> np.ndarray:
    kind = _kind(column.type)
    if kind in ("int", "float", "bool"):
        return column.to_pandas().to_numpy(dtype=np.float64, na_value=np.nan)
    values = column.to_pandas().to_numpy(dtype=object, na_value=None)
    return np.array([None if v is None else str(v) for v in values], dtype=object)
