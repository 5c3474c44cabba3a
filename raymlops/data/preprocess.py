"""Feature preprocessing fitted on the training split only.

At scale the fit is a distributed aggregation: each Ray task reduces its block of the training
split to :class:`TrainStats` (per numeric feature: count, mean, M2, min, max; per categorical
feature: value counts), the driver merges them and :func:`fit_plan` turns them into the
:class:`~raymlops.model.FeaturePlan` a version stores, with exactly the statistics Ray Data's
``StandardScaler`` / ``MinMaxScaler`` / ``OneHotEncoder`` compute (tested against them). The
workers that read the data then apply that plan inside ``map_batches``; scoring and serving apply
the same plan, so there is no training/serving skew.

:class:`FeaturePipeline` fits the same steps with Ray's own preprocessors on an in-memory frame:
the reference the distributed fit is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import ray
from ray.data.preprocessor import Preprocessor
from ray.data.preprocessors import MinMaxScaler, OneHotEncoder, StandardScaler

from raymlops.config import PreprocessStep
from raymlops.errors import ConfigError
from raymlops.model import FeaturePlan, PlanStep, TableSchema

__all__ = ["FeaturePipeline", "TrainStats", "fit_plan", "step_columns"]

_EPSILON = 1e-8  # Ray's scalers treat a smaller spread as 1 (constant columns)


class FeaturePipeline:
    """Turns a frame of raw feature columns into one float32 matrix.

    Args:
        steps: the pipeline file's ``preprocess`` list.
    """

    def __init__(self, steps: list[PreprocessStep]) -> None:
        self.steps = steps

    def fit(self, train: pd.DataFrame, schema: TableSchema) -> FeaturePipeline:
        """Fit every step on the training rows with Ray Data, then record the output layout."""
        self.features_ = list(schema.features)
        self.categorical_ = list(schema.categorical)
        preprocessors: list[Preprocessor] = []
        encoded: set[str] = set()
        for step in self.steps:
            columns = step_columns(step.spec, schema)
            if not columns:
                continue
            if step.kind == "standard_scaler":
                preprocessors.append(StandardScaler(columns=columns))
            elif step.kind == "min_max_scaler":
                preprocessors.append(MinMaxScaler(columns=columns))
            elif step.kind == "one_hot_encoder":
                max_cat = getattr(step.spec, "max_categories", None)
                preprocessors.append(
                    OneHotEncoder(
                        columns=columns, max_categories=dict.fromkeys(columns, max_cat) if max_cat else None
                    )
                )
                encoded.update(columns)
        leftover = [c for c in schema.categorical if c not in encoded]
        if leftover:
            # Models need numbers: categories nobody asked to encode are one-hot encoded anyway.
            preprocessors.append(OneHotEncoder(columns=leftover))
        ds: ray.data.Dataset = ray.data.from_pandas(train[self.features_])
        for prep in preprocessors:
            prep.fit(ds)
            ds = prep.transform(ds) if prep is not preprocessors[-1] else ds
        self.preprocessors_ = preprocessors
        sample = self._apply(train[self.features_].head(2))
        self.feature_names_ = self._names(sample)
        self.plan_ = self._compile()
        return self

    def _compile(self) -> list[tuple[str, Any]]:
        """The fitted steps as plain numpy operations, one entry per feature in output order.

        Ray's ``transform_batch`` goes through Arrow and pandas for every call (tens of ms for a
        single row here); serving and scoring call ``transform`` on every request or block, so the
        fitted statistics are folded into an affine map per numeric column and a lookup per
        categorical column. :meth:`transform_with_ray` keeps Ray's own path as the reference.
        """
        plan: list[tuple[str, Any]] = []
        for col in self.features_:
            if col in self.categorical_:
                lookup = {c: i for i, c in enumerate(self._categories(col))}
                plan.append(("onehot", (col, lookup)))
                continue
            scale, shift = 1.0, 0.0
            for prep in self.preprocessors_:
                if col not in getattr(prep, "columns", ()):
                    continue
                if isinstance(prep, StandardScaler):
                    mean, std = prep.stats_[f"mean({col})"], prep.stats_[f"std({col})"]
                    if mean is None or std is None:
                        scale, shift = float("nan"), float("nan")
                        continue
                    std = 1.0 if std < _EPSILON else std
                    scale, shift = scale / std, (shift - mean) / std
                elif isinstance(prep, MinMaxScaler):
                    low, high = prep.stats_[f"min({col})"], prep.stats_[f"max({col})"]
                    if low is None or high is None:
                        scale, shift = float("nan"), float("nan")
                        continue
                    span = 1.0 if high - low < _EPSILON else high - low
                    scale, shift = scale / span, (shift - low) / span
            plan.append(("affine", (col, scale, shift)))
        return plan

    def _apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        for prep in self.preprocessors_:
            frame = prep.transform_batch(frame)
        return frame

    def _names(self, transformed: pd.DataFrame) -> list[str]:
        names: list[str] = []
        for col in transformed.columns:
            if col in self.categorical_:
                cats = self._categories(col)
                names.extend(f"{col}={c}" for c in cats)
            else:
                names.append(str(col))
        return names

    def _categories(self, col: str) -> list[str]:
        for prep in self.preprocessors_:
            if isinstance(prep, OneHotEncoder) and col in prep.columns:
                stats = prep.stats_[f"unique_values({col})"]
                return [str(k) for k, _ in sorted(stats.items(), key=lambda kv: kv[1])]
        return []

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The float32 feature matrix for rows that passed schema checks."""
        plan = getattr(self, "plan_", None)
        if plan is None:
            return self.transform_with_ray(frame)
        n = len(frame)
        out = np.zeros((n, self.n_features_out), dtype=np.float32)
        affine = [(i, entry) for i, entry in enumerate(plan) if entry[0] == "affine"]
        positions = self._positions()
        if affine:
            cols = [entry[1][0] for _, entry in affine]
            values = frame[cols].to_numpy(dtype=np.float64, na_value=np.nan)
            scale = np.array([entry[1][1] for _, entry in affine])
            shift = np.array([entry[1][2] for _, entry in affine])
            out[:, [positions[i] for i, _ in affine]] = values * scale + shift
        for i, (kind, spec) in enumerate(plan):
            if kind != "onehot":
                continue
            col, lookup = spec
            codes = frame[col].map(lookup).to_numpy(dtype=np.float64, na_value=np.nan)
            hit = ~np.isnan(codes)
            out[np.flatnonzero(hit), positions[i] + codes[hit].astype(np.int64)] = 1.0
        return out

    def _positions(self) -> list[int]:
        """Output column where each plan entry starts."""
        positions, at = [], 0
        for kind, spec in self.plan_:
            positions.append(at)
            at += len(spec[1]) if kind == "onehot" else 1
        return positions

    def transform_with_ray(self, frame: pd.DataFrame) -> np.ndarray:
        """The same matrix through Ray Data's ``transform_batch`` (the reference implementation)."""
        out = self._apply(frame[self.features_].reset_index(drop=True))
        parts = []
        for col in out.columns:
            values = out[col]
            if col in self.categorical_:
                parts.append(np.stack(values.to_numpy()).astype(np.float32, copy=False))
            else:
                parts.append(values.to_numpy(dtype=np.float32).reshape(-1, 1))
        return np.hstack(parts) if parts else np.empty((len(frame), 0), dtype=np.float32)

    @property
    def n_features_out(self) -> int:
        return len(self.feature_names_)

    def to_plan(self) -> FeaturePlan:
        """The fitted steps as the plain-number plan a model version stores (``features.json``)."""
        steps = []
        for kind, spec in self.plan_:
            if kind == "onehot":
                column, lookup = spec
                cats = tuple(c for c, _ in sorted(lookup.items(), key=lambda kv: kv[1]))
                steps.append(PlanStep(column, categories=cats))
            else:
                column, scale, shift = spec
                steps.append(PlanStep(column, scale=float(scale), shift=float(shift)))
        return FeaturePlan(steps)


# ------------------------------------------------------------------------------------------------
# the distributed fit


@dataclass
class TrainStats:
    """Mergeable statistics of the training split's features (one block's, or all of them).

    Attributes:
        numeric: names of the numeric features, in schema order.
        n, mean, m2, low, high: per numeric feature, over its non-missing values (Chan's merge
            keeps the variance exact where sum-of-squares would cancel).
        counts: categorical feature -> category -> rows.
    """

    numeric: list[str]
    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    low: np.ndarray
    high: np.ndarray
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def of_batch(
        cls, numeric: list[str], values: np.ndarray, categorical: dict[str, np.ndarray]
    ) -> TrainStats:
        present = ~np.isnan(values)
        n = present.sum(axis=0).astype(np.float64)
        safe = np.where(present, values, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, safe.sum(axis=0) / np.maximum(n, 1), 0.0)
        m2 = (np.where(present, values - mean, 0.0) ** 2).sum(axis=0)
        low = np.where(present, values, np.inf).min(axis=0) if len(values) else np.full(len(numeric), np.inf)
        high = (
            np.where(present, values, -np.inf).max(axis=0) if len(values) else np.full(len(numeric), -np.inf)
        )
        counts = {}
        for col, cats in categorical.items():
            series = pd.Series(cats, dtype=object)
            counts[col] = {str(k): int(v) for k, v in series.value_counts(dropna=True).items()}
        return cls(list(numeric), n, mean, m2, low, high, counts)

    def merge(self, other: TrainStats) -> TrainStats:
        n = self.n + other.n
        delta = other.mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, self.mean + delta * other.n / np.maximum(n, 1), 0.0)
            m2 = self.m2 + other.m2 + np.where(n > 0, delta**2 * self.n * other.n / np.maximum(n, 1), 0.0)
        counts = {c: dict(v) for c, v in self.counts.items()}
        for col, cats in other.counts.items():
            into = counts.setdefault(col, {})
            for k, v in cats.items():
                into[k] = into.get(k, 0) + v
        return TrainStats(
            self.numeric,
            n,
            mean,
            m2,
            np.minimum(self.low, other.low),
            np.maximum(self.high, other.high),
            counts,
        )

    def column(self, name: str) -> tuple[float, float, float, float] | None:
        """(mean, population std, min, max) of a numeric feature; None when it had no values."""
        i = self.numeric.index(name)
        if self.n[i] == 0:
            return None
        return (
            float(self.mean[i]),
            float(np.sqrt(self.m2[i] / self.n[i])),
            float(self.low[i]),
            float(self.high[i]),
        )


def step_columns(spec: Any, schema: TableSchema) -> list[str]:
    """The columns a preprocess step applies to, as the pipeline file names them."""
    cols = spec.columns
    if cols == "numeric":
        return schema.numeric
    if cols == "categorical":
        return schema.categorical
    if cols == "all":
        return list(schema.features)
    unknown = [c for c in cols if c not in schema.features]
    if unknown:
        raise ConfigError(f"preprocess step names column(s) {unknown} that are not features")
    return list(cols)


def _top_categories(counts: dict[str, int], limit: int | None) -> list[str]:
    if limit is None or len(counts) <= limit:
        return sorted(counts)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return sorted(k for k, _ in ranked)


def fit_plan(steps: list[PreprocessStep], schema: TableSchema, stats: TrainStats) -> FeaturePlan:
    """The fitted plan from merged training statistics, step by step as Ray's preprocessors fit.

    Each scaler sees the column as the steps before it left it: affine steps move the mean and the
    extremes and stretch the spread, so their statistics follow from the raw ones exactly.
    """
    affine: dict[str, tuple[float, float]] = {c: (1.0, 0.0) for c in schema.numeric}
    limits: dict[str, int | None] = {}
    for step in steps:
        columns = step_columns(step.spec, schema)
        for col in columns:
            if step.kind == "one_hot_encoder":
                if col in schema.categorical:
                    limits[col] = getattr(step.spec, "max_categories", None)
                continue
            if col not in affine:
                continue
            scale, shift = affine[col]
            raw = stats.column(col)
            if raw is None or not np.isfinite(scale):
                affine[col] = (float("nan"), float("nan"))
                continue
            mean, std, low, high = raw
            # statistics of the column after the earlier steps (scale > 0 keeps min/max in place)
            mean, std, low, high = (
                scale * mean + shift,
                scale * std,
                scale * low + shift,
                scale * high + shift,
            )
            if step.kind == "standard_scaler":
                std = 1.0 if std < _EPSILON else std
                affine[col] = (scale / std, (shift - mean) / std)
            elif step.kind == "min_max_scaler":
                span = 1.0 if high - low < _EPSILON else high - low
                affine[col] = (scale / span, (shift - low) / span)
    plan_steps = []
    for col in schema.features:
        if col in schema.categorical:
            cats = _top_categories(stats.counts.get(col, {}), limits.get(col))
            plan_steps.append(PlanStep(col, categories=tuple(cats)))
        else:
            scale, shift = affine[col]
            plan_steps.append(PlanStep(col, scale=float(scale), shift=float(shift)))
    return FeaturePlan(plan_steps)
