"""The table schema a model was trained on, inferred on the first run and stored with the model.

Scoring and serving check incoming rows against it, so a column that changed type or vanished is
caught at the door instead of producing silent nonsense predictions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = ["TableSchema", "infer_column_type", "infer_task"]

Task = Literal["classification", "regression"]
ColumnType = Literal["float", "int", "category", "bool", "string"]

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


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclass
class TableSchema:
    """What a model expects: feature columns and types, the target, the task and its classes."""

    target: str
    task: Task
    features: list[str]
    categorical: list[str]
    column_types: dict[str, ColumnType]
    classes: list[Any] | None = None
    categories: dict[str, list[Any]] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)

    @property
    def numeric(self) -> list[str]:
        return [c for c in self.features if c not in self.categorical]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.classes is not None:
            out["classes"] = [_jsonable(c) for c in self.classes]
        out["categories"] = {k: [_jsonable(v) for v in vals] for k, vals in self.categories.items()}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableSchema:
        return cls(**data)
