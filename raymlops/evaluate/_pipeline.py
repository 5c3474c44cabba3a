"""The pipeline's held-out evaluation: every candidate and the champion on the same test rows.

One distributed pass (:func:`raymlops.evaluate.splits.evaluate_split`) scores the raw test rows
with every model through the one scoring path and merges mergeable partials on the driver:
metrics, the bootstrap interval, the confusion matrix, fairness per group, the prediction
statistics of the reference, and a bounded, seeded sample of rows for explanations. The driver
never holds the test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from raymlops.evaluate.splits import BundleRef, EvaluationResult, evaluate_split
from raymlops.model import ModelBundle, TableSchema

__all__ = ["CHAMPION", "HeldOut", "evaluate_held_out"]

SAMPLE_ROWS = 2000
CHAMPION = "__champion__"


@dataclass
class HeldOut:
    """Held-out results per model (candidates by name, the champion as ``__champion__``).

    Attributes:
        result: the distributed pass's merged results.
        selected: the candidate the interval and fairness were computed for.
        note: why the champion could not be compared, if so.
    """

    result: EvaluationResult
    schema: TableSchema
    selected: str
    note: str | None = None

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return {name: dict(m.metrics) for name, m in self.result.models.items()}

    @property
    def sample(self) -> pd.DataFrame:
        return self.result.sample

    @property
    def sample_rows(self) -> int:
        return self.result.sample_rows

    def interval(self) -> dict[str, Any] | None:
        return self.result.models[self.selected].interval

    def confusion(self) -> list[list[int]] | None:
        return self.result.models[self.selected].confusion_matrix

    def fairness(self) -> dict[str, Any] | None:
        return self.result.models[self.selected].fairness

    def prediction(self) -> Any:
        return self.result.models[self.selected].prediction

    def explain_inputs(self, bundle: ModelBundle) -> tuple[pd.DataFrame, np.ndarray]:
        return self.result.explain_inputs(self.selected, bundle)

    def champion_summary(self, champion: tuple[int, Any] | None) -> dict[str, Any] | None:
        if champion is None:
            return None
        version = champion[0]
        if self.note is not None:
            return {"version": version, "metrics": {}, "note": self.note}
        return self.result.models[CHAMPION].champion_record(version)


def _champion_usable(bundle: ModelBundle, schema: TableSchema) -> str | None:
    if bundle.schema.target != schema.target or bundle.schema.task != schema.task:
        return "champion has another target or task"
    if schema.task == "classification" and list(bundle.classes or []) != list(schema.classes or []):
        return "champion was trained on other classes"
    return None


def evaluate_held_out(
    test_rows: Any,
    schema: TableSchema,
    bundles: dict[str, ModelBundle],
    selected: str,
    champion: tuple[int, ModelBundle] | None,
    *,
    store_uri: str,
    name: str,
    gate_metric: str,
    group_column: str | None,
    seed: int,
    rows: int | None = None,
) -> HeldOut:
    """Score the test part with every model in one pass and reduce it to what the gate and report need.

    The champion is loaded by each scoring actor from the store (signature checked there too), so
    only its reference travels.
    """
    models: dict[str, Any] = dict(bundles)
    note = None
    if champion is not None:
        note = _champion_usable(champion[1], schema)
        if note is None:
            models[CHAMPION] = BundleRef(f"{name}:{champion[0]}", store_uri)
    result = evaluate_split(
        test_rows,
        models,
        target=schema.target,
        group_column=group_column,
        seed=seed,
        interval_metric=gate_metric,
        detailed=[selected],
        sample_rows=SAMPLE_ROWS,
        rows=rows,
    )
    for model_name, evaluation in result.models.items():
        if model_name != CHAMPION and (evaluation.error or evaluation.rejected):
            from raymlops.errors import InputError

            raise InputError(
                f"model {model_name} could not score the checked test rows: "
                f"{evaluation.error or evaluation.first_rejection}"
            )
    return HeldOut(result=result, schema=schema, selected=selected, note=note)
