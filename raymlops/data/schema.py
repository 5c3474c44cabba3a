"""Inferring a training table's schema (column types, task); the schema itself is model-layer data."""

from __future__ import annotations

import numpy as np
import pandas as pd

from raymlops.model import ColumnType, TableSchema, Task

__all__ = ["TableSchema", "infer_column_type", "infer_task"]

_MAX_CLASSES = 50


def infer_column_type(series: pd.Series) -> ColumnType:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    if isinstance(series.dtype, pd.CategoricalDtype):
        return "category"
    return "string"


def infer_task(target: pd.Series) -> Task:
    """Classification for labels (strings, bools, few distinct integers); regression otherwise."""
    values = target.dropna()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "classification"
    as_float = values.astype(float)
    if not np.all(np.isclose(as_float, np.round(as_float))):
        return "regression"
    return "classification" if values.nunique() <= _MAX_CLASSES else "regression"
