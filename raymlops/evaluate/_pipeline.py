"""The pipeline's held-out evaluation: every candidate and the champion on the same test rows.

The test part is read once; each batch is checked and scored by every model through the one
scoring path (:meth:`~raymlops.model.ModelBundle.score`); a bounded, seeded sample of raw rows is
kept for explanations. What leaves this module is metrics, intervals, confusion matrices,
per-group figures and the sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from raymlops.errors import InputError
from raymlops.evaluate.fairness import fairness_report
from raymlops.evaluate.metrics import bootstrap_interval, compute_metrics, confusion
from raymlops.model import ModelBundle, TableSchema

__all__ = ["HeldOut", "evaluate_held_out"]

SAMPLE_ROWS = 2000
CHAMPION = "__champion__"


@dataclass
class HeldOut:
    """Held-out results per model (candidates by name, the champion as ``__champion__``).

    Attributes:
        metrics, intervals, confusion: per model.
        sample: a bounded sample of raw test rows (explanations, split drift, fast-path check).
        sample_rows: its size, recorded in the version.
        notes: why the champion could not be compared, if so.
    """

    task: str
    n_classes: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    intervals: dict[str, Any] = field(default_factory=dict)
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)
    sample: pd.DataFrame | None = None
    sample_y: np.ndarray | None = None
    sample_rows: int = 0
    notes: dict[str, str] = field(default_factory=dict)
    _y: np.ndarray | None = field(default=None, repr=False)
    _scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _groups: np.ndarray | None = field(default=None, repr=False)

    @property
    def y(self) -> np.ndarray:
        """The encoded target of the held-out rows."""
        return self._y if self._y is not None else np.array([])

    def scores(self, name: str) -> np.ndarray:
        return self._scores[name]

    def fairness(self, name: str, schema: TableSchema, column: str) -> dict[str, Any]:
        return fairness_report(
            self._groups if self._groups is not None else np.array([]),
            self._y if self._y is not None else np.array([]),
            self._scores[name],
            schema.task,
            schema.classes,
            column=column,
        )

    def champion_summary(
        self, champion: tuple[int, ModelBundle] | None, schema: TableSchema
    ) -> dict[str, Any] | None:
        if champion is None:
            return None
        version = champion[0]
        if CHAMPION in self.notes:
            return {"version": version, "metrics": {}, "note": self.notes[CHAMPION]}
        return {"version": version, "metrics": self.metrics.get(CHAMPION, {})}

    def sample_inputs(self, plan: Any, schema: TableSchema) -> np.ndarray | None:
        if self.sample is None or not len(self.sample):
            return None
        from raymlops.data.prepare import raw_features

        table = pa.Table.from_pandas(self.sample[schema.features], preserve_index=False)
        numeric, categorical = raw_features(table, schema)
        return plan.apply(numeric, categorical)


def _champion_usable(bundle: ModelBundle, schema: TableSchema) -> str | None:
    if bundle.schema.target != schema.target or bundle.schema.task != schema.task:
        return "champion has another target or task"
    if schema.task == "classification" and list(bundle.classes or []) != list(schema.classes or []):
        return "champion was trained on other classes"
    return None


def evaluate_held_out(
    prepared: Any,
    bundles: dict[str, ModelBundle],
    champion: tuple[int, ModelBundle] | None,
    *,
    gate_metric: str,
    group_column: str | None,
    seed: int,
) -> HeldOut:
    """Score the test part with every model and reduce it to the figures the gate and report need."""
    from raymlops.data.prepare import encode_target, sample_rows

    schema = prepared.schema
    models = dict(bundles)
    result = HeldOut(task=schema.task, n_classes=schema.n_classes)
    if champion is not None:
        note = _champion_usable(champion[1], schema)
        if note:
            result.notes[CHAMPION] = note
        else:
            models[CHAMPION] = champion[1]
    ys: list[np.ndarray] = []
    scores: dict[str, list[np.ndarray]] = {name: [] for name in models}
    groups: list[np.ndarray] = []
    for batch in prepared.rows("test").iter_batches(batch_size=65536, batch_format="pyarrow"):
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        ys.append(encode_target(table.column(schema.target), schema))
        if group_column is not None:
            groups.append(np.asarray(table.column(group_column).to_pandas().to_numpy(dtype=object)))
        for name, bundle in list(models.items()):
            try:
                scored = bundle.score(table)
            except InputError as err:
                if name != CHAMPION:
                    raise
                result.notes[CHAMPION] = f"champion cannot score these rows: {err}"
                del models[name]
                continue
            if scored.n_rejected:
                if name != CHAMPION:
                    raise InputError(f"model {name} rejected {scored.n_rejected} checked test row(s)")
                result.notes[CHAMPION] = "champion cannot score these rows"
                del models[name]
                continue
            scores[name].append(np.asarray(scored.scores))
    y = np.concatenate(ys) if ys else np.array([])
    result._y = y
    result._groups = np.concatenate(groups) if groups else None
    for name in models:
        s = np.concatenate(scores[name])
        result._scores[name] = s
        result.metrics[name] = compute_metrics(schema.task, y, s, schema.n_classes)
        if name == CHAMPION:
            continue
        result.intervals[name] = bootstrap_interval(schema.task, y, s, gate_metric, schema.n_classes)
        if schema.task == "classification":
            result.confusion[name] = confusion(y, s.argmax(axis=1), schema.n_classes)
    sample = sample_rows(prepared, "test", SAMPLE_ROWS)
    result.sample = sample
    result.sample_rows = len(sample)
    result.sample_y = encode_target(sample[schema.target], schema) if len(sample) else np.array([])
    del seed
    return result
