"""``raymlops datagen``: synthetic classification data of a known size, shape and content."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from raymlops.cli import app
from raymlops.datagen import DatagenSpec, feature_names, generate
from raymlops.errors import ConflictError

runner = CliRunner()


def test_writes_the_requested_rows_and_features_in_shards(tmp_path: Path) -> None:
    summary = generate(
        DatagenSpec(rows=10_000, features=12, classes=3),
        str(tmp_path / "d"),
        shards=3,
        row_group_rows=1000,
        use_ray=False,
    )
    files = sorted((tmp_path / "d").glob("*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert summary["rows"] == 10_000 and summary["shards"] == 3
    table = pq.read_table(tmp_path / "d")
    assert table.column_names == ["id", *feature_names(12), "label"]
    assert sorted(table.column("id").to_pylist()) == list(range(10_000))
    assert set(table.column("label").to_pylist()) == {0, 1, 2}
    assert pq.ParquetFile(files[0]).metadata.num_row_groups == 4  # 3334 rows in groups of 1000


def test_same_spec_gives_the_same_rows_whatever_the_sharding(tmp_path: Path) -> None:
    spec = DatagenSpec(rows=3000, features=5, seed=7)
    generate(spec, str(tmp_path / "a"), shards=1, use_ray=False)
    generate(spec, str(tmp_path / "b"), shards=4, row_group_rows=500, use_ray=False)
    a = pq.read_table(tmp_path / "a").sort_by("id")
    b = pq.read_table(tmp_path / "b").sort_by("id")
    assert a.equals(b)
    other = pq.read_table(
        generate(DatagenSpec(rows=3000, features=5, seed=8), str(tmp_path / "c"), use_ray=False)["output"]
    ).sort_by("id")
    assert not a.equals(other)


def test_labels_carry_signal(tmp_path: Path) -> None:
    """A model can learn the labels: the informative features differ between the classes."""
    generate(DatagenSpec(rows=4000, features=10), str(tmp_path / "d"), use_ray=False)
    frame = pq.read_table(tmp_path / "d").to_pandas()
    means = frame.groupby("label")[feature_names(10)[:2]].mean()
    assert (means.diff().abs().iloc[1] > 0.1).any()


def test_bad_rows_have_a_null_first_feature(tmp_path: Path) -> None:
    generate(DatagenSpec(rows=1000, features=4, bad_rows=7), str(tmp_path / "d"), shards=2, use_ray=False)
    table = pq.read_table(tmp_path / "d")
    assert table.column("f_00").null_count == 7
    assert sum(table.column(c).null_count for c in table.column_names) == 7


def test_refuses_to_mix_with_existing_files_unless_asked(tmp_path: Path) -> None:
    spec = DatagenSpec(rows=100, features=2)
    generate(spec, str(tmp_path / "d"), shards=2, use_ray=False)
    with pytest.raises(ConflictError, match="--overwrite"):
        generate(spec, str(tmp_path / "d"), use_ray=False)
    generate(spec, str(tmp_path / "d"), overwrite=True, use_ray=False)
    assert len(list((tmp_path / "d").glob("*.parquet"))) == 1


def test_cli_prints_one_json_summary(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["datagen", "--rows", "500", "--features", "3", "--output", str(tmp_path / "d"), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == 500 and summary["features"] == 3 and summary["files"] == ["part-00000.parquet"]
    assert pq.read_metadata(tmp_path / "d" / "part-00000.parquet").num_rows == 500


def test_cli_rejects_nonsense_sizes(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["datagen", "--rows", "10", "--features", "0", "--output", str(tmp_path / "d")]
    )
    assert result.exit_code == 2 and "features must be >= 1" in result.output


def test_a_fresh_process_console_holds_no_ray_warnings(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "raymlops"),
            "datagen",
            "--rows",
            "100",
            "--features",
            "3",
            "--shards",
            "2",  # two shards: written by Ray tasks, so Ray starts
            "--output",
            str(tmp_path / "d"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "WARNING" not in out.stderr and "wrote 100 rows" in out.stderr
