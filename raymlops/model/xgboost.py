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

__all__ = ["KIND", "XGBOOST_FILE", "XGBoostParams", "booster_params", "scores_from_output", "tree_methods"]

XGBOOST_FILE = "model.ubj"
#: Batches smaller than this are scored on one thread (see :class:`XGBoostPredictor`).
SMALL_BATCH_ROWS = 1024


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
    if not (task == "classification" and n_classes == 2):
        out.pop("scale_pos_weight")  # binary only: XGBoost warns about it for any other objective
    if task == "classification" and n_classes > 2:
        out.update(objective="multi:softprob", num_class=n_classes, eval_metric="mlogloss")
    elif task == "classification":
        out.update(objective="binary:logistic", eval_metric="logloss")
    else:
        out.update(objective="reg:squarederror", eval_metric="rmse")
    out["device"] = "cuda" if gpu else "cpu"
    return out


def scores_from_output(out: Any, task: str) -> np.ndarray:
    """raymlops scores from a booster's prediction: (n, k) probabilities or (n,) predictions.

    Training (the validation metric every few rounds) and inference both go through here, so the
    metric a trial reports is the one the saved model reproduces.
    """
    out = np.asarray(out, dtype=np.float64)
    if task != "classification":
        return out.reshape(-1)
    if out.ndim == 1:  # binary:logistic gives P(class 1)
        return np.column_stack([1.0 - out, out])
    return out / np.clip(out.sum(axis=1, keepdims=True), 1e-12, None)


def tree_methods(model: Any) -> set[str]:
    """Every ``tree_method`` a model entry's trials can use (its params and its search space)."""
    searched = model.search.get("tree_method")
    choices = (searched.choice or []) if searched is not None else []
    return {str(XGBoostParams.model_validate(model.params).tree_method), *map(str, choices)}


class XGBoostPredictor:
    """Scores feature matrices with a booster: one thread for small batches, all of them for big ones.

    Waking XGBoost's thread pool costs more than predicting a few rows: one row took 0.4 ms on one
    thread and 20-50 ms with the default (all cores) on a busy 2-core machine, while 18k rows ran
    as fast on one thread. So small batches (serving, ``@serve.batch``) use a one-thread copy of
    the booster, and setting no parameter per call keeps the predictor safe to share across threads.
    """

    def __init__(self, booster: Any, task: str) -> None:
        self.booster = booster
        self.task = task
        config = json.loads(booster.save_config())
        self.objective = str(config["learner"]["objective"]["name"])
        self._small = booster.copy()
        self._small.set_param({"nthread": 1})

    def scores(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        booster = self._small if len(X) < SMALL_BATCH_ROWS else self.booster
        return scores_from_output(booster.inplace_predict(X), self.task)


class XGBoostKind:
    name = "xgboost"
    gpu_scoring = False

    def check_config(self, model: Any) -> None:
        XGBoostParams.model_validate(model.params)
        check_keys(model.search, XGBoostParams.model_fields, "search", "kind xgboost")
        if model.workers > 1 and "exact" in tree_methods(model):
            raise ValueError(
                f"tree_method 'exact' cannot train on {model.workers} workers (XGBoost's exact method "
                "is single-process only); use 'hist' or 'approx', or workers: 1"
            )

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
