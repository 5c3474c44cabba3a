"""Rows never pass through the driver on the training path: the driver holds statistics and samples.

The pipeline runs in this process (the driver) on Parquet files; every way a Ray Dataset hands
rows to its caller is wrapped to count what reaches the driver. ``to_pandas``/``take_all`` and
the like must not be called at all; iteration may bring only the bounded samples (explanations,
reference statistics) and per-block statistics, far fewer rows than the data holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymlops.config import PipelineConfig
from raymlops.data._errors import DataValidationError

pytestmark = pytest.mark.slow

ROWS = 120_000
_FORBIDDEN = (
    "to_pandas",
    "take_all",
    "take",
    "take_batch",
    "to_numpy_refs",
    "to_arrow_refs",
    "to_pandas_refs",
)


def _write(folder: Path, rows: int, *, text_column: bool = False) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 6))
    label = (X[:, 0] + 0.5 * X[:, 1] - X[:, 2] > 0).astype(np.int64)
    for i, part in enumerate(np.array_split(np.arange(rows), 4)):
        columns: dict[str, Any] = {"id": part, "label": label[part]}
        for j in range(6):
            columns[f"f{j}"] = X[part, j]
        if text_column:
            columns["f5"] = np.where(X[part, 5] > 0, "high", "low")
        pq.write_table(pa.table(columns), folder / f"part-{i}.parquet")
    return str(folder)


def _cfg(source: str, **validation: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "rows_stay",
            "data": {"source": source, "target": "label", "exclude": ["id"], "split": {"key": "id"}},
            "validation": validation,
            "models": [
                {
                    "name": "rf",
                    "kind": "random_forest",
                    "workers": 2,
                    "params": {"n_estimators": 4, "max_depth": 6},
                }
            ],
            "tune": {"num_samples": 1},
            "gate": {"min": {"accuracy": 0.6}},
            "deploy": {"promote_to": "champion"},
        }
    )


@pytest.fixture
def driver_rows(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts rows the driver pulls out of Datasets; fails on whole-dataset collection."""
    import ray.data

    seen = {"rows": 0}
    for name in _FORBIDDEN:

        def refuse(self: Any, *args: Any, __name: str = name, **kwargs: Any) -> Any:
            raise AssertionError(f"the driver called Dataset.{__name}()")

        monkeypatch.setattr(ray.data.Dataset, name, refuse)
    original = ray.data.Dataset.iter_batches

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        for batch in original(self, *args, **kwargs):
            n = (
                batch.num_rows
                if hasattr(batch, "num_rows")
                else len(next(iter(batch.values())))
                if isinstance(batch, dict)
                else len(batch)
            )
            seen["rows"] += int(n)
            yield batch

    monkeypatch.setattr(ray.data.Dataset, "iter_batches", counting)
    return seen


def test_run_on_files_keeps_rows_in_ray_and_checks_the_champion_schema(
    ray_session, tmp_path, driver_rows
) -> None:
    from raymlops.pipeline import run_pipeline

    source = _write(tmp_path / "data", ROWS)
    summary = run_pipeline(_cfg(source), store=str(tmp_path / "store"))
    assert summary["promoted"] == "champion" and summary["metrics"]["accuracy"] > 0.8
    assert summary["data"]["rows"] == ROWS
    # samples (explanations ~2k, reference ~20k) and per-block statistics; never the data itself
    assert driver_rows["rows"] < ROWS // 4, driver_rows

    changed = _write(tmp_path / "changed", 5_000, text_column=True)
    with pytest.raises(DataValidationError) as err:
        run_pipeline(_cfg(changed), store=str(tmp_path / "store"))
    assert "'f5'" in str(err.value) and "allow_schema_change" in str(err.value)


def test_validate_on_files_reads_no_rows_into_the_driver(ray_session, tmp_path, driver_rows) -> None:
    from raymlops.pipeline import validate_pipeline

    report = validate_pipeline(_cfg(_write(tmp_path / "data", 20_000)))
    assert report["rows"] == 20_000 and report["ok"]
    assert driver_rows["rows"] < 100  # one statistics row per block
