import pandas as pd
import pytest

from raymlops.data._errors import DataError
from raymlops.data.ingest import read_frame, source_columns


@pytest.fixture
def table():
    return pd.DataFrame(
        {"a": range(30), "b": [float(i) / 3 for i in range(30)], "target": [i % 2 for i in range(30)]}
    )


def test_reads_a_folder_of_parquet_shards_in_order(ray_session, tmp_path, table):
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(3):
        table.iloc[i * 10 : (i + 1) * 10].to_parquet(folder / f"part-{i}.parquet")
    frame = read_frame(str(folder))
    assert len(frame) == 30
    assert frame["a"].tolist() == list(range(30))


def test_reads_csv_through_a_file_uri(ray_session, tmp_path, table):
    path = tmp_path / "data.csv"
    table.to_csv(path, index=False)
    frame = read_frame(f"file://{path}")
    assert frame.shape == (30, 3)


def test_missing_source_is_named(tmp_path):
    with pytest.raises(DataError, match="not found: .*nope.csv"):
        read_frame(str(tmp_path / "nope.csv"))


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(DataError, match="digits"):
        read_frame("builtin://mnist")


def test_unsupported_file_type_is_named(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("{}")
    with pytest.raises(DataError, match="data.json"):
        read_frame(str(path))


def test_files_under_underscore_folders_are_not_read(ray_session, tmp_path, table):
    folder = tmp_path / "scored"
    (folder / "_rejected").mkdir(parents=True)
    table.to_parquet(folder / "part-0.parquet")
    table.head(3).to_parquet(folder / "_rejected" / "part-0.parquet")
    assert len(read_frame(str(folder))) == 30


def test_columns_are_read_from_the_first_file_without_ray(tmp_path, table):
    # Called before Ray starts (monitor refuses input without the model's columns in a second).
    import ray

    ray_was_up = ray.is_initialized()
    csv = tmp_path / "data.csv"
    table.to_csv(csv, index=False)
    folder = tmp_path / "shards"
    folder.mkdir()
    table.to_parquet(folder / "part-0.parquet")
    table.to_parquet(folder / "part-1.parquet")
    assert source_columns(str(csv)) == ["a", "b", "target"]
    assert source_columns(f"file://{folder}") == ["a", "b", "target"]
    assert "target" in source_columns("builtin://digits")
    assert ray.is_initialized() == ray_was_up
    with pytest.raises(DataError, match="not found: .*nope.parquet"):
        source_columns(str(tmp_path / "nope.parquet"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="cannot read .*empty.csv"):
        source_columns(str(tmp_path / "empty.csv"))
