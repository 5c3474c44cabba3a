"""Reading versions written before model files became pickle-free (opt-in only).

Those versions hold ``preprocessor.pkl`` (the fitted preprocessing, pickled) and, for forests,
``model.joblib``. Unpickling runs code, so :meth:`ModelBundle.from_dir` calls this only when the
user asked for it (``--allow-legacy-pickle``); the pickled preprocessing is converted to a
:class:`FeaturePlan` on the way in, so the rest of raymlops never sees a pickled object.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from ._features import FeaturePlan, PlanStep
from ._schema import TableSchema

__all__ = ["load_legacy"]


class _LegacyFeaturePipeline:
    """Stands in for the old ``raymlops.data.preprocess.FeaturePipeline``: its state only."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("raymlops.data.preprocess", "FeaturePipeline"):
            return _LegacyFeaturePipeline
        return super().find_class(module, name)


def _plan(old: Any) -> FeaturePlan:
    steps = []
    for kind, spec in old.plan_:
        if kind == "onehot":
            column, lookup = spec
            steps.append(
                PlanStep(column, categories=tuple(k for k, _ in sorted(lookup.items(), key=lambda kv: kv[1])))
            )
        else:
            column, scale, shift = spec
            steps.append(PlanStep(column, scale=float(scale), shift=float(shift)))
    return FeaturePlan(steps)


def load_legacy(cls: Any, folder: Path, metadata: dict[str, Any]) -> Any:
    folder = Path(folder)
    schema = TableSchema.from_dict(json.loads((folder / "schema.json").read_text()))
    with open(folder / "preprocessor.pkl", "rb") as fh:
        plan = _plan(_Unpickler(fh).load())  # noqa: S301 - the user opted in to legacy pickles
    kind = str(metadata.get("kind") or ("keras" if (folder / "model.keras").exists() else "random_forest"))
    if kind == "random_forest":
        import joblib

        from .random_forest import ONNX_FILE, ForestPredictor, _onnx_session

        onnx = _onnx_session(str(folder / ONNX_FILE)) if (folder / ONNX_FILE).exists() else None
        predictor: Any = ForestPredictor(
            joblib.load(folder / "model.joblib"), schema.task, schema.n_classes, onnx
        )
    else:
        from .keras import KIND

        predictor = KIND.load(folder, metadata, schema=schema)
    return cls(kind, predictor, plan, schema, {**metadata, "kind": kind})
