"""Shared helpers for the batch-scoring tests: one small model per test session, and input files.

The model (3 numeric features and one categorical ``color``, a small random forest) is trained once
per process through the real pipeline and reused by every scoring test.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

FEATURES = ["x1", "x2", "x3", "color"]
COLORS = ["red", "green", "blue"]


@dataclass(frozen=True)
class TrainedModel:
    store: str
    ref: str


_lock = threading.Lock()
_cache: dict[str, TrainedModel] = {}


def make_rows(n: int, seed: int = 0, start_id: int = 0) -> pd.DataFrame:
    """Rows shaped like the training table (id, x1..x3, color, label); label depends on x1 and color."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    color = rng.choice(COLORS, size=n)
    label = ((x[:, 0] + (color == "red") * 1.5 + rng.normal(scale=0.3, size=n)) > 0.5).astype(np.int64)
    return pd.DataFrame(
        {
            "id": np.arange(start_id, start_id + n, dtype=np.int64),
            "x1": x[:, 0],
            "x2": x[:, 1],
            "x3": x[:, 2],
            "color": color,
            "label": label,
        }
    )


def trained_model(root: Path) -> TrainedModel:
    """Train (once per process) a small forest through the real pipeline into ``root``."""
    with _lock:
        if "model" in _cache:
            return _cache["model"]
        from raymlops.config import load_pipeline
        from raymlops.pipeline import run_pipeline

        root.mkdir(parents=True, exist_ok=True)
        make_rows(600, seed=1).to_csv(root / "train.csv", index=False)
        cfg = {
            "name": "scoretest",
            "data": {
                "source": str(root / "train.csv"),
                "target": "label",
                "exclude": ["id"],
                "split": {"test_size": 0.2, "validation_size": 0.2, "seed": 0, "stratify": True},
            },
            "validation": {"max_null_fraction": 0.0, "forbid_constant_columns": False},
            "preprocess": [{"standard_scaler": {"columns": "numeric"}}],
            "models": [
                {
                    "name": "rf",
                    "kind": "random_forest",
                    "workers": 1,
                    "params": {"n_estimators": 8, "max_depth": 6, "random_state": 0},
                }
            ],
            "tune": {"num_samples": 1, "metric": "accuracy", "mode": "max"},
            "gate": {"min": {"accuracy": 0.5}},
            "deploy": {"promote_to": "champion"},
        }
        path = root / "pipeline.yaml"
        path.write_text(yaml.safe_dump(cfg))
        summary = run_pipeline(load_pipeline(path), store=str(root / "store"))
        model = TrainedModel(str(root / "store"), f"scoretest:{summary['version']}")
        _cache["model"] = model
        return model


def write_parquet_shards(frame: pd.DataFrame, folder: Path, shards: int, row_group_rows: int) -> list[Path]:
    """``frame`` cut into ``shards`` Parquet files with small row groups (so files split into units)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(frame)), shards)):
        path = folder / f"shard-{i:02d}.parquet"
        pq.write_table(
            pa.Table.from_pandas(frame.iloc[part], preserve_index=False), path, row_group_size=row_group_rows
        )
        paths.append(path)
    return paths


def read_scored(folder: Path) -> pd.DataFrame:
    """Every scored row of an output folder (part files only, as any Parquet reader would see them)."""
    parts = sorted(folder.glob("part-*.parquet"))
    return pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)


def read_rejected(folder: Path) -> pd.DataFrame:
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame()
    return pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
