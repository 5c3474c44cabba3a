"""Helpers shared by the evaluation tests: a small fitted model bundle without the whole pipeline."""

from __future__ import annotations

import numpy as np
import pandas as pd

from raymlops.config import PreprocessStep
from raymlops.data.preprocess import FeaturePipeline
from raymlops.data.schema import TableSchema
from raymlops.model import ModelBundle


def toy_frame(rows: int = 1200, seed: int = 0, task: str = "classification") -> pd.DataFrame:
    """``x0`` drives the target strongly, category ``c`` a little, ``x1`` not at all."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=rows)
    x1 = rng.normal(size=rows)
    c = rng.choice(np.array(["a", "b", "c"]), size=rows)
    signal = 2.5 * x0 + 0.8 * (c == "a")
    if task == "classification":
        y = (signal + rng.normal(scale=0.5, size=rows) > 0).astype(np.int64)
    else:
        y = signal + rng.normal(scale=0.3, size=rows)
    return pd.DataFrame({"x0": x0, "x1": x1, "c": c.astype(object), "y": y})


def toy_bundle(frame: pd.DataFrame, task: str = "classification") -> ModelBundle:
    """A random forest on ``toy_frame`` rows, wrapped like the pipeline wraps its models (needs Ray)."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    schema = TableSchema(
        target="y",
        task=task,  # type: ignore[arg-type]
        features=["x0", "x1", "c"],
        categorical=["c"],
        column_types={
            "x0": "float",
            "x1": "float",
            "c": "category",
            "y": "int" if task == "classification" else "float",
        },
        classes=[0, 1] if task == "classification" else None,
        categories={"c": ["a", "b", "c"]},
    )
    features = FeaturePipeline([PreprocessStep.model_validate({"standard_scaler": {"columns": "numeric"}})])
    features.fit(frame, schema)
    X = features.transform(frame)
    if task == "classification":
        est = RandomForestClassifier(n_estimators=30, max_depth=6, random_state=0).fit(
            X, frame["y"].to_numpy()
        )
    else:
        est = RandomForestRegressor(n_estimators=30, max_depth=6, random_state=0).fit(
            X, frame["y"].to_numpy()
        )
    return ModelBundle.from_estimator("random_forest", est, features.to_plan(), schema)
