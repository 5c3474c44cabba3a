"""``kind: xgboost``: gradient-boosted trees trained data-parallel with Ray Train's XGBoostTrainer.

The booster is saved in XGBoost's own UBJSON model format (plain data, no pickle) and scored with
``inplace_predict`` (no DMatrix per call). xgboost is imported only when a booster is loaded or
scored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ._kinds import SavedFiles, check_keys
from ._schema import TableSchema

__all__ = ["KIND", "XGBOOST_FILE", "XGBoostParams", "booster_params"]

XGBOOST_FILE = "model.ubj"


class XGBoostParams(BaseModel):
    """The boosting parameters raymlops passes to ``xgboost.train`` (a misspelled key is an error)."""

    model_config = ConfigDict(extra="forbid")

    num_boost_round: int = Field(100, ge=1)
    max_depth: int = Field(6, ge=0)
    learning_rate: float = Field(0.3, gt=0)
    min_child_weight: float = Field(1.0, ge=0)
    subsample: float = Field(1.0, gt=0, le=1)
    colsample_bytree: float = Field(1.0, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    reg_alpha: float = Field(0.0, ge=0)
    gamma: float = Field(0.0, ge=0)
    max_bin: int = Field(256, ge=2)
    grow_policy: Literal["depthwise", "lossguide"] = "depthwise"
    max_leaves: int = Field(0, ge=0)
    scale_pos_weight: float = Field(1.0, gt=0)
    tree_method: Literal["hist", "approx", "exact"] = "hist"
    seed: int = 0


def booster_params(params: XGBoostParams, task: str, n_classes: int, *, gpu: bool) -> dict[str, Any]:
    """The ``xgboost.train`` parameter dict for the task (objective, metric, device)."""
    out = params.model_dump(exclude={"num_boost_round"})
    if task == "classification" and n_classes > 2:
        out.update(objective="multi:softprob", num_class=n_classes, eval_metric="mlogloss")
    elif task == "classification":
        out.update(objective="binary:logistic", eval_metric="logloss")
    else:
        out.update(objective="reg:squarederror", eval_metric="rmse")
    out["device"] = "cuda" if gpu else "cpu"
    return out


class XGBoostPredictor:
    def __init__(self, booster: Any, task: str) -> None:
        self.booster = booster
        self.task = task
        config = json.loads(booster.save_config())
        self.objective = str(config["learner"]["objective"]["name"])

    def scores(self, X: np.ndarray) -> np.ndarray:
        out = np.asarray(self.booster.inplace_predict(np.asarray(X, dtype=np.float32)), dtype=np.float64)
        if self.task != "classification":
            return out.reshape(-1)
        if out.ndim == 1:  # binary:logistic gives P(class 1)
            return np.column_stack([1.0 - out, out])
        return out / np.clip(out.sum(axis=1, keepdims=True), 1e-12, None)


class XGBoostKind:
    name = "xgboost"
    gpu_scoring = False

    def check_config(self, model: Any) -> None:
        XGBoostParams.model_validate(model.params)
        check_keys(model.search, XGBoostParams.model_fields, "search", "kind xgboost")

    def wrap(self, estimator: Any, schema: TableSchema) -> XGBoostPredictor:
        return XGBoostPredictor(estimator, schema.task)

    def save(
        self, estimator: Any, folder: Path, *, schema: TableSchema, check_X: np.ndarray | None = None
    ) -> SavedFiles:
        estimator.save_model(str(Path(folder) / XGBOOST_FILE))
        return SavedFiles([XGBOOST_FILE])

    def load(
        self, folder: Path, metadata: dict[str, Any], *, schema: TableSchema, threads: int | None = None
    ) -> XGBoostPredictor:
        import xgboost as xgb

        booster = xgb.Booster(model_file=str(Path(folder) / XGBOOST_FILE))
        booster.set_param({"device": "cpu", **({"nthread": threads} if threads else {})})
        return XGBoostPredictor(booster, schema.task)


KIND = XGBoostKind()
