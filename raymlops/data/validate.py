"""Data checks run before anything trains: each failure names the column, the value and where it is.

The checks work on a :class:`~raymlops.data.profile.SourceProfile`, the merged statistics of one
distributed pass over the source, so they cost the same on a thousand rows as on a billion and
the driver never holds a row. All checks run and all problems are reported at once, so a user
fixes their file in one pass instead of one error per run. A bad value is named with its column,
its value and its place: the row for in-memory data, the file and the row within it for files
(:func:`locate` reads just that column of just that file, in a Ray task, to find the row).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from raymlops.config import DataConfig, ValidationConfig
from raymlops.data._errors import DataValidationError
from raymlops.data.profile import ColumnProfile, ProfileSpec, SourceProfile
from raymlops.data.schema import TableSchema

__all__ = [
    "CheckResult",
    "check_profile",
    "coerce_frame",
    "locate",
    "profile_spec",
    "validate_training_frame",
]

_NUMERIC_SHARE = 0.8
_MAX_CLASSES = 50

# (file, column, shown value or None for a missing one) -> row within the file
Locator = Callable[[str, str, str | None], int | None]


@dataclass
class CheckResult:
    """What the checks found: the schema to train with and what the user should know.

    Attributes:
        schema: the inferred (or declared) schema, constant columns already left out.
        warnings: problems that do not stop the run (constant columns, by default).
        rows: rows in the source.
    """

    schema: TableSchema
    warnings: list[str] = field(default_factory=list)
    rows: int = 0


def profile_spec(data_cfg: DataConfig) -> ProfileSpec:
    """What the profiling pass tracks for this pipeline's data section."""
    distinct = {data_cfg.target, *(data_cfg.categorical or [])}
    if isinstance(data_cfg.schema_, dict):
        distinct |= {c for c, t in data_cfg.schema_.items() if t in ("category", "string", "bool")}
    return ProfileSpec(target=data_cfg.target, distinct=frozenset(distinct), key=data_cfg.split.key)


def _place(path: str | None, row: int | None, column: str, value: str | None, locator: Locator | None) -> str:
    if path is None:
        return f"row {row}" if row is not None else "an unknown row"
    if row is None and locator is not None:
        row = locator(path, column, value)
    return f"{path}, row {row}" if row is not None else path


def _describe_bad(name: str, col: ColumnProfile, locator: Locator | None) -> str:
    value, path, row = col.bad[0]
    examples = ", ".join(v for v, _, _ in col.bad)
    where = _place(path, row, name, value, locator)
    return f"{col.non_numeric} non-numeric value(s), first at {where}: {examples}"


def _features(
    profile: SourceProfile, data_cfg: DataConfig, excluded: list[str], problems: list[str]
) -> list[str]:
    columns = list(profile.columns)
    target = data_cfg.target
    if data_cfg.features is not None:
        features = list(data_cfg.features)
        missing = [c for c in features if c not in profile.columns]
        if missing:
            problems.append(f"feature column(s) missing: {missing}; columns are: {columns}")
            features = [c for c in features if c in profile.columns]
    else:
        features = [c for c in columns if c != target and c not in excluded]
    for col in excluded:
        if col not in profile.columns:
            problems.append(f"column {col!r} named in exclude/fairness is missing; columns are: {columns}")
    if target in features:
        problems.append(f"target column {target!r} is also listed as a feature")
        features.remove(target)
    return features


def _categorical(
    profile: SourceProfile, data_cfg: DataConfig, features: list[str], problems: list[str]
) -> list[str]:
    explicit = data_cfg.schema_ if isinstance(data_cfg.schema_, dict) else None
    if data_cfg.categorical is not None:
        for c in data_cfg.categorical:
            if c not in profile.columns:
                problems.append(f"categorical column {c!r} is missing; columns are: {list(profile.columns)}")
        return [c for c in data_cfg.categorical if c in features]
    if explicit is not None:
        return [c for c in features if explicit.get(c) in ("category", "string", "bool")]
    out = []
    for c in features:
        col = profile.columns[c]
        if col.kind != "string":
            continue
        present = col.count - col.nulls
        numeric_share = 1 - col.non_numeric / present if present else 0.0
        if numeric_share < _NUMERIC_SHARE:
            out.append(c)
    return out


def _explicit_schema_problems(profile: SourceProfile, data_cfg: DataConfig, features: list[str]) -> list[str]:
    explicit = data_cfg.schema_ if isinstance(data_cfg.schema_, dict) else None
    if explicit is None:
        return []
    problems = [
        f"column {c!r} is not in the declared schema"
        for c in [*features, data_cfg.target]
        if c not in explicit
    ]
    problems += [
        f"column {c!r} declared in the schema is missing from the data"
        for c in explicit
        if c not in profile.columns
    ]
    for c, declared in explicit.items():
        col = profile.columns.get(c)
        if col is None or c == data_cfg.target:
            continue
        if declared in ("int", "float") and col.non_numeric:
            problems.append(f"column {c!r} is declared {declared} but holds non-numeric values")
        if declared == "int" and not col.integral:
            problems.append(f"column {c!r} is declared int but holds fractional values")
    return problems


def _infer_task(col: ColumnProfile) -> str:
    """Classification for labels (strings, bools, few distinct whole numbers); regression otherwise."""
    if col.kind in ("string", "bool"):
        return "classification"
    if not col.integral or col.distinct is None:
        return "regression"
    return "classification" if len(col.distinct) <= _MAX_CLASSES else "regression"


def _column_type(col: ColumnProfile) -> str:
    return {"int": "int", "float": "float", "bool": "bool", "null": "float"}.get(col.kind, "float")


def check_profile(
    profile: SourceProfile,
    data_cfg: DataConfig,
    checks: ValidationConfig,
    source: str,
    *,
    extra_excluded: tuple[str, ...] = (),
    locator: Locator | None = None,
) -> CheckResult:
    """Every check ``validate`` does, on the merged statistics of the source.

    Raises:
        DataValidationError: listing every problem found, each naming its column and place.
    """
    if profile.rows == 0:
        raise DataValidationError(source, ["the data has no rows"])
    target = data_cfg.target
    if target not in profile.columns:
        raise DataValidationError(
            source,
            [f"target column {target!r} is missing; columns are: {', '.join(map(str, profile.columns))}"],
        )
    problems: list[str] = []
    warnings: list[str] = []
    excluded = list(dict.fromkeys([*data_cfg.exclude, *extra_excluded]))
    features = _features(profile, data_cfg, excluded, problems)
    problems += _explicit_schema_problems(profile, data_cfg, features)
    categorical = _categorical(profile, data_cfg, features, problems)
    for c in features:
        col = profile.columns[c]
        if c not in categorical and col.non_numeric:
            problems.append(f"numeric column {c!r}: {_describe_bad(c, col, locator)}")
        if c in categorical and col.distinct is None:
            problems.append(
                f"categorical column {c!r} has more than 1000 distinct values; exclude it or encode it first"
            )
    for c in [*features, target]:
        col = profile.columns[c]
        null_fraction = col.nulls / col.count if col.count else 0.0
        if null_fraction > checks.max_null_fraction:
            path, row = col.first_null or (None, None)
            problems.append(
                f"column {c!r} has {null_fraction:.1%} nulls (limit {checks.max_null_fraction:.1%}), "
                f"first at {_place(path, row, c, None, locator)}"
            )
    constant = [c for c in features if profile.columns[c].constant]
    if constant and checks.forbid_constant_columns:
        for c in constant:
            problems.append(f"column {c!r} is constant (single value {_single_value(profile.columns[c])})")
    elif constant:
        warnings.append(
            f"constant column(s) left out of the features: {', '.join(constant)} "
            "(set validation.forbid_constant_columns: true to refuse them)"
        )
    inputs = list(features)
    features = [c for c in features if c not in constant] if not checks.forbid_constant_columns else features
    if not features:
        problems.append("no feature columns remain after removing the target, excluded and constant columns")
    if profile.rows < checks.min_rows:
        problems.append(f"only {profile.rows} rows; at least {checks.min_rows} are needed")

    tcol = profile.columns[target]
    task = data_cfg.task if data_cfg.task != "auto" else _infer_task(tcol)
    classes = None
    if task == "classification":
        values = list((tcol.distinct or {}).keys())
        if tcol.distinct is None:
            problems.append(
                f"target column {target!r} has more than 1000 distinct values; is it a regression?"
            )
        elif len(values) < 2:
            problems.append(f"target column {target!r} has a single class {values}; nothing to learn")
        classes = sorted(values, key=lambda v: (str(type(v)), v))
    elif tcol.non_numeric:
        problems.append(f"regression target {target!r}: {_describe_bad(target, tcol, locator)}")
    if problems:
        raise DataValidationError(source, problems)

    categorical = [c for c in categorical if c in features]
    column_types: dict[str, Any] = {c: _column_type(profile.columns[c]) for c in [*features, target]}
    if task == "classification" and tcol.kind == "string":
        column_types[target] = "string"
    for c in categorical:
        column_types[c] = "category"
    categories = {c: sorted(map(str, (profile.columns[c].distinct or {}).keys())) for c in categorical}
    schema = TableSchema(
        target=target,
        task=task,  # type: ignore[arg-type]
        features=features,
        categorical=categorical,
        column_types=column_types,
        classes=classes,
        categories=categories,
        excluded=excluded,
        dropped=[c for c in constant if c not in features],
        inputs=inputs,
    )
    return CheckResult(schema=schema, warnings=warnings, rows=profile.rows)


def _single_value(col: ColumnProfile) -> list[Any]:
    if col.distinct:
        return list(col.distinct)[:1]
    return [col.min] if col.n_num else []


# ------------------------------------------------------------------------------------------------
# in-memory frames (builtin datasets, tests, library users)


def coerce_frame(frame: pd.DataFrame, schema: TableSchema) -> pd.DataFrame:
    """The frame with numeric features as numbers and categories as strings, as the model sees them."""
    frame = frame.copy()
    for c in schema.features:
        if c in schema.categorical:
            frame[c] = frame[c].astype(str).where(frame[c].notna(), None)
        elif pd.api.types.is_bool_dtype(frame[c]):
            frame[c] = frame[c].astype(float)
        elif not pd.api.types.is_numeric_dtype(frame[c]):
            frame[c] = pd.to_numeric(frame[c], errors="coerce")
    if schema.task == "regression" and not pd.api.types.is_numeric_dtype(frame[schema.target]):
        frame[schema.target] = pd.to_numeric(frame[schema.target])
    return frame


def _arrow_of(frame: pd.DataFrame) -> pa.Table:
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # mixed-type object columns (e.g. floats with a stray string): Arrow needs one type
        fixed = frame.copy()
        for c in fixed.columns:
            if fixed[c].dtype == object:
                fixed[c] = fixed[c].map(lambda v: v if v is None or isinstance(v, str) else str(v))
        return pa.Table.from_pandas(fixed, preserve_index=False)


def validate_training_frame(
    frame: pd.DataFrame,
    data_cfg: DataConfig,
    checks: ValidationConfig,
    source: str,
    *,
    extra_excluded: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, TableSchema]:
    """Check an in-memory table (same checks as a source) and coerce it to the schema.

    Returns the frame with numeric columns coerced to numbers and the schema to store with the
    model. Raises :class:`DataValidationError` listing every problem found.
    """
    profile = SourceProfile.of_table(_arrow_of(frame), profile_spec(data_cfg), offset=0)
    result = check_profile(profile, data_cfg, checks, source, extra_excluded=extra_excluded)
    return coerce_frame(frame, result.schema), result.schema


# ------------------------------------------------------------------------------------------------
# finding a bad value's row in its file


def _find_row(path: str, column: str, shown: str | None) -> int | None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from raymlops.data.ingest import resolve_filesystem

    fs, inner = resolve_filesystem(path if "://" in path else path)
    with fs.open_input_file(inner) as handle:
        if inner.lower().endswith(".csv"):
            table = pacsv.read_csv(handle, convert_options=pacsv.ConvertOptions(include_columns=[column]))
        else:
            table = pq.read_table(handle, columns=[column])
    values = table.column(column).to_pandas()
    if shown is None:
        hits = np.flatnonzero(values.isna().to_numpy())
    else:
        hits = np.flatnonzero(values.map(lambda v: repr(v) == shown).to_numpy(dtype=bool))
    return int(hits[0]) if len(hits) else None


def locate(path: str, column: str, shown: str | None) -> int | None:
    """The row (0-based, header excluded) of the first ``shown`` value (or null) of ``column`` in ``path``.

    Runs as a Ray task next to the data when Ray is up: the file may be on an object store and
    large, and only this one column of this one file is read.
    """
    import ray

    if not ray.is_initialized():
        return _find_row(path, column, shown)
    try:
        return ray.get(ray.remote(num_cpus=0.25)(_find_row).remote(path, column, shown))
    except Exception:  # noqa: BLE001 - the location is a courtesy; the check's message stands without it
        return None
