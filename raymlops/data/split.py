"""Deterministic (stratified) splits: the same data and seed give the same rows in each part."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from raymlops.config import SplitConfig
from raymlops.data.schema import TableSchema

__all__ = ["split_frame"]


def _split(
    frame: pd.DataFrame, size: float, seed: int, stratify_on: pd.Series | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    if stratify_on is not None and stratify_on.value_counts().min() < 2:
        stratify_on = None  # a class with one row cannot be in both parts; fall back to a plain split
    left, right = train_test_split(frame, test_size=size, random_state=seed, stratify=stratify_on)
    return left, right


def split_frame(
    frame: pd.DataFrame, schema: TableSchema, cfg: SplitConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train, validation (for Tune trials) and held-out test parts, in that order."""
    strat = cfg.stratify and schema.task == "classification"
    rest, test = _split(frame, cfg.test_size, cfg.seed, frame[schema.target] if strat else None)
    train, val = _split(rest, cfg.validation_size, cfg.seed + 1, rest[schema.target] if strat else None)
    return train, val, test
