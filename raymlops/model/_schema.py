"""The table schema a model was trained on, stored with every version as ``schema.json``.

Scoring and serving check incoming rows against it, so a column that changed type or vanished is
caught at the door instead of producing silent nonsense predictions. It is plain data (no pandas),
because serving loads it in every replica.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["ColumnType", "TableSchema", "Task"]

Task = Literal["classification", "regression"]
ColumnType = Literal["float", "int", "category", "bool", "string"]


def _jsonable(v: Any) -> Any:
    item = getattr(v, "item", None)
    return item() if callable(item) and not isinstance(v, (str, bytes)) else v


@dataclass
class TableSchema:
    """What a model expects: feature columns and types, the target, the task and its classes.

    Attributes:
        target: the target column.
        task: classification or regression.
        features: the model's input columns, in order.
        categorical: the features treated as categories (the others are numeric).
        column_types: type of every feature and of the target.
        classes: the class labels in index order (classification), else None.
        categories: the categories seen in training, per categorical feature.
        excluded: columns read but never used as features.
        dropped: constant columns left out of the features (reported, not silently lost).
        inputs: the candidate feature columns in source order, dropped ones included: what a
            client that sends whole rows as lists sends (empty for versions that predate it).
    """

    target: str
    task: Task
    features: list[str]
    categorical: list[str]
    column_types: dict[str, ColumnType]
    classes: list[Any] | None = None
    categories: dict[str, list[Any]] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)

    @property
    def numeric(self) -> list[str]:
        """The numeric features, in feature order."""
        categorical = set(self.categorical)
        return [c for c in self.features if c not in categorical]

    @property
    def n_classes(self) -> int:
        return len(self.classes or [])

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
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"schema.json has unknown key(s) {unknown}")
        return cls(**data)
