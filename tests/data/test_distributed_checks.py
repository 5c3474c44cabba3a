"""The data checks, split and fingerprint as one distributed pass over files (real Ray, real files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymlops.config import PipelineConfig
from raymlops.data._errors import DataValidationError
from raymlops.data.prepare import check_source, prepare
from raymlops.data.preprocess import FeaturePipeline, fit_plan
from raymlops.data.validate import validate_training_frame


def _frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "a": x[:, 0] * 10 + 3,
            "b": rng.integers(0, 100, n),
            "c": x[:, 2],
            "color": rng.choice(["red", "green", "blue"], n),
            "label": np.where(x[:, 0] + x[:, 2] > 0, "yes", "no"),
        }
    )


def _cfg(source: str, **data: object) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "t",
            "data": {"source": source, "target": "label", "exclude": ["id"], **data},
            "preprocess": [
                {"standard_scaler": {"columns": ["a", "b"]}},
                {"min_max_scaler": {"columns": ["a", "c"]}},
                {"one_hot_encoder": {"columns": "categorical"}},
            ],
            "models": [{"name": "rf", "kind": "random_forest"}],
        }
    )


def _write_parquet(frame: pd.DataFrame, folder: Path, shards: int) -> str:
    folder.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(len(frame)), shards)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[part], preserve_index=False), folder / f"p{i}.parquet")
    return str(folder)


def test_bad_value_is_named_with_its_file_row_column_and_value(ray_session, tmp_path: Path) -> None:
    frame = _frame(300)
    folder = tmp_path / "csv"
    folder.mkdir()
    frame.iloc[:150].to_csv(folder / "a.csv", index=False)
    bad = frame.iloc[150:].copy()
    bad["c"] = bad["c"].astype(object)
    bad.iloc[41, bad.columns.get_loc("c")] = "twelve"
    bad.to_csv(folder / "b.csv", index=False)
    with pytest.raises(DataValidationError) as err:
        check_source(_cfg(str(folder)))
    msg = str(err.value)
    assert "'c'" in msg and "'twelve'" in msg and "b.csv, row 41" in msg, msg


def test_split_and_fingerprint_do_not_depend_on_the_file_layout(ray_session, tmp_path: Path) -> None:
    frame = _frame()
    one = check_source(_cfg(_write_parquet(frame, tmp_path / "one", 1), split={"key": "id"}))
    five = check_source(
        _cfg(_write_parquet(frame.sample(frac=1, random_state=1), tmp_path / "five", 5), split={"key": "id"})
    )
    assert one.fingerprint == five.fingerprint
    assert one.split.sizes == five.split.sizes
    # stratified: each class is split in the asked proportions
    for label in ("yes", "no"):
        total = sum(one.split.sizes[p][label] for p in ("train", "validation", "test"))
        assert abs(one.split.sizes["test"][label] / total - 0.2) < 0.01
    # the same rows land in the test part
    ids = lambda checked: sorted(  # noqa: E731
        int(i)
        for b in prepare(_cfg(checked.source, split={"key": "id"}), checked)
        .rows("test")
        .iter_batches(batch_format="pandas")
        for i in b["id"]
    )
    assert ids(one) == ids(five)
    changed = frame.copy()
    changed.loc[7, "a"] += 1
    other = check_source(_cfg(_write_parquet(changed, tmp_path / "changed", 2), split={"key": "id"}))
    assert other.fingerprint != one.fingerprint


def test_distributed_fit_equals_ray_preprocessors_on_the_training_rows(ray_session, tmp_path: Path) -> None:
    frame = _frame()
    cfg = _cfg(_write_parquet(frame, tmp_path / "data", 3))
    checked = check_source(cfg)
    prepared = prepare(cfg, checked)
    train = pd.concat(
        [b for b in prepared.rows("train").iter_batches(batch_format="pandas")], ignore_index=True
    )
    assert len(train) == checked.split.total("train")
    coerced, schema = validate_training_frame(train.drop(columns=["_h"]), cfg.data, cfg.validation, "mem")
    assert schema.features == checked.schema.features
    reference = FeaturePipeline(cfg.preprocess).fit(coerced, schema)
    mine = fit_plan(cfg.preprocess, checked.schema, prepared.stats)
    assert mine.feature_names == reference.to_plan().feature_names
    np.testing.assert_allclose(
        mine.apply(coerced[schema.numeric].to_numpy(float), {"color": coerced["color"].to_numpy(object)}),
        reference.transform_with_ray(coerced),
        rtol=1e-5,
        atol=1e-6,
    )


def test_model_input_streams_from_files_with_the_fitted_plan(ray_session, tmp_path: Path) -> None:
    cfg = _cfg(_write_parquet(_frame(), tmp_path / "data", 3))
    prepared = prepare(cfg, check_source(cfg))
    data = prepared.training_data()
    batch = next(iter(data.train.iter_batches(batch_size=64, batch_format="numpy")))
    assert batch["x"].shape == (64, len(prepared.plan.feature_names)) and batch["x"].dtype == np.float32
    assert set(np.unique(batch["y"])) <= {0, 1}
    assert data.n_train == prepared.checked.split.total("train") and data.n_val > 0
