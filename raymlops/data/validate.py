"""Data checks run before anything trains: each failure names the column, the value and the row.

All checks run and all problems are reported at once, so a user fixes their file in one pass
instead of one error per run.
"""

from __future__ import annotations

import pandas as pd

from raymlops.config import DataConfig, ValidationConfig
from raymlops.data._errors import DataValidationError
from raymlops.data.schema import TableSchema, infer_column_type, infer_task

__all__ = ["validate_training_frame"]

_NUMERIC_SHARE = 0.8


def _non_numeric(series: pd.Series) -> pd.Series:
    """Mask of non-null values that do not parse as numbers."""
    parsed = pd.to_numeric(series, errors="coerce")
    return series.notna() & parsed.isna()


def _describe_bad(series: pd.Series, mask: pd.Series) -> str:
    idx = mask[mask].index
    first = idx[0]
    examples = ", ".join(repr(series[i]) for i in idx[:3])
    return f"{int(mask.sum())} non-numeric value(s), first at row {first}: {examples}"


def validate_training_frame(
    frame: pd.DataFrame,
    data_cfg: DataConfig,
    checks: ValidationConfig,
    source: str,
    *,
    extra_excluded: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, TableSchema]:
    """Check the raw training table and infer (or apply) its schema.

    Returns the frame with numeric columns coerced to numbers and the schema to store with the
    model. Raises :class:`DataValidationError` listing every problem found.
    """
    problems: list[str] = []
    if len(frame) == 0:
        raise DataValidationError(source, ["the data has no rows"])
    columns = list(frame.columns)
    target = data_cfg.target
    if target not in frame.columns:
        raise DataValidationError(
            source, [f"target column {target!r} is missing; columns are: {', '.join(map(str, columns))}"]
        )
    excluded = list(dict.fromkeys([*data_cfg.exclude, *extra_excluded]))
    if data_cfg.features is not None:
        features = list(data_cfg.features)
        missing = [c for c in features if c not in frame.columns]
        if missing:
            problems.append(f"feature column(s) missing: {missing}; columns are: {columns}")
            features = [c for c in features if c in frame.columns]
    else:
        features = [c for c in columns if c != target and c not in excluded]
    for col in excluded:
        if col not in frame.columns:
            problems.append(f"column {col!r} named in exclude/fairness is missing; columns are: {columns}")
    if target in features:
        problems.append(f"target column {target!r} is also listed as a feature")
        features.remove(target)
    if not features:
        problems.append("no feature columns remain after removing the target and excluded columns")

    explicit = data_cfg.schema_ if isinstance(data_cfg.schema_, dict) else None
    if explicit is not None:
        for col in [*features, target]:
            if col not in explicit:
                problems.append(f"column {col!r} is not in the declared schema")
        for col in explicit:
            if col not in frame.columns:
                problems.append(f"column {col!r} declared in the schema is missing from the data")

    if data_cfg.categorical is not None:
        categorical = [c for c in data_cfg.categorical if c in features]
        for c in data_cfg.categorical:
            if c not in frame.columns:
                problems.append(f"categorical column {c!r} is missing; columns are: {columns}")
    elif explicit is not None:
        categorical = [c for c in features if explicit.get(c) in ("category", "string", "bool")]
    else:
        categorical = []
        for c in features:
            s = frame[c]
            if infer_column_type(s) in ("string", "category", "bool"):
                non_null = s.dropna()
                numeric_share = 1 - _non_numeric(non_null).mean() if len(non_null) else 0.0
                if numeric_share < _NUMERIC_SHARE:
                    categorical.append(c)

    frame = frame.copy()
    for c in features:
        if c in categorical:
            continue
        s = frame[c]
        if infer_column_type(s) in ("int", "float"):
            continue
        if pd.api.types.is_bool_dtype(s):
            frame[c] = s.astype(float)
            continue
        bad = _non_numeric(s)
        if bad.any():
            problems.append(f"numeric column {c!r}: {_describe_bad(s, bad)}")
        else:
            frame[c] = pd.to_numeric(s, errors="coerce")

    for c in [*features, target]:
        null_fraction = float(frame[c].isna().mean())
        if null_fraction > checks.max_null_fraction:
            first = frame.index[frame[c].isna()][0]
            problems.append(
                f"column {c!r} has {null_fraction:.1%} nulls (limit {checks.max_null_fraction:.1%}), "
                f"first at row {first}"
            )
    if checks.forbid_constant_columns:
        for c in features:
            if frame[c].nunique(dropna=True) <= 1:
                problems.append(
                    f"column {c!r} is constant (single value {frame[c].dropna().head(1).tolist()})"
                )
    if len(frame) < checks.min_rows:
        problems.append(f"only {len(frame)} rows; at least {checks.min_rows} are needed")

    task = data_cfg.task if data_cfg.task != "auto" else infer_task(frame[target])
    classes = None
    if task == "classification":
        uniques = frame[target].dropna().unique()
        if len(uniques) < 2:
            problems.append(f"target column {target!r} has a single class {list(uniques)}; nothing to learn")
        classes = sorted(uniques.tolist(), key=lambda v: (str(type(v)), v))
    elif not pd.api.types.is_numeric_dtype(frame[target]):
        bad = _non_numeric(frame[target])
        if bad.any():
            problems.append(f"regression target {target!r}: {_describe_bad(frame[target], bad)}")
        else:
            frame[target] = pd.to_numeric(frame[target])

    if problems:
        raise DataValidationError(source, problems)

    column_types = {c: infer_column_type(frame[c]) for c in [*features, target]}
    for c in categorical:
        column_types[c] = "category"
    categories = {c: sorted(map(str, frame[c].dropna().unique().tolist())) for c in categorical}
    for c in categorical:
        frame[c] = frame[c].astype(str).where(frame[c].notna(), None)
    schema = TableSchema(
        target=target,
        task=task,
        features=features,
        categorical=categorical,
        column_types=column_types,
        classes=classes,
        categories=categories,
        excluded=excluded,
    )
    return frame, schema
