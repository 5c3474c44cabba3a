"""Reading a pipeline's data source into a Ray Dataset.

Sources are ``builtin://NAME`` (datasets bundled with scikit-learn, so demos and tests need no
network) or a path/URI to a CSV or Parquet file or a folder of shards on any pyarrow filesystem.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from raymlops.data._errors import DataError

if TYPE_CHECKING:
    import ray

__all__ = [
    "BUILTIN_DATASETS",
    "detect_format",
    "load_builtin",
    "read_frame",
    "read_source",
    "resolve_filesystem",
    "source_columns",
]


def _sk_frame(loader: Callable[..., Any], rename: dict[str, str] | None = None) -> pd.DataFrame:
    bunch = loader(as_frame=True)
    frame = bunch.frame.copy()
    if rename:
        frame = frame.rename(columns=rename)
    frame.columns = [str(c).replace(" ", "_").replace("(", "").replace(")", "") for c in frame.columns]
    return frame


def _sklearn_data_file(name: str) -> str | None:
    """A data file scikit-learn ships, found without importing scikit-learn (a second of start-up)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", name)
    return path if os.path.exists(path) else None


def _digits() -> pd.DataFrame:
    """load_digits(as_frame=True)'s frame, read straight from the CSV scikit-learn ships."""
    path = _sklearn_data_file("digits.csv.gz")
    if path is None:
        from sklearn.datasets import load_digits

        return _sk_frame(load_digits)
    import numpy as np

    values = np.loadtxt(path, delimiter=",", dtype=np.float64)
    frame = pd.DataFrame(values[:, :-1], columns=[f"pixel_{r}_{c}" for r in range(8) for c in range(8)])
    frame["target"] = values[:, -1].astype(np.int64)
    return frame


def _breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    return _sk_frame(load_breast_cancer)


def _wine() -> pd.DataFrame:
    from sklearn.datasets import load_wine

    return _sk_frame(load_wine)


def _iris() -> pd.DataFrame:
    from sklearn.datasets import load_iris

    return _sk_frame(load_iris)


def _diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    return _sk_frame(load_diabetes)


BUILTIN_DATASETS: dict[str, Callable[[], pd.DataFrame]] = {
    "digits": _digits,
    "breast_cancer": _breast_cancer,
    "wine": _wine,
    "iris": _iris,
    "diabetes": _diabetes,
}


def load_builtin(name: str) -> pd.DataFrame:
    try:
        return BUILTIN_DATASETS[name]()
    except KeyError:
        raise DataError(
            f"unknown builtin dataset {name!r}; available: {', '.join(sorted(BUILTIN_DATASETS))}"
        ) from None


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a plain path or any URI pyarrow knows."""
    try:
        if "://" in uri:
            return pafs.FileSystem.from_uri(uri)
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    except (pa.ArrowException, ValueError) as err:
        raise DataError(f"cannot open data source {uri}: {err}") from None


def _hidden(relative: str) -> bool:
    """Files under a "."/"_" file or folder (e.g. a scoring run's _rejected/) are not data."""
    return any(part.startswith((".", "_")) for part in relative.lstrip("/").split("/"))


_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def detect_format(fs: pafs.FileSystem, path: str, uri: str) -> tuple[str, list[str]]:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"data source not found: {uri}")
    if info.type == pafs.FileType.File:
        files = [path]
    else:
        selector = pafs.FileSelector(path, recursive=True)
        files = sorted(
            f.path
            for f in fs.get_file_info(selector)
            if f.type == pafs.FileType.File and not _hidden(f.path[len(path) :])
        )
        if not files:
            raise DataError(f"data folder {uri} holds no .csv or .parquet files")
    formats = set()
    for f in files:
        suffix = "." + f.rsplit(".", 1)[-1].lower() if "." in f.rsplit("/", 1)[-1] else ""
        if suffix not in _FORMATS:
            raise DataError(f"{f}: unsupported file type {suffix or '(none)'}; use .csv or .parquet")
        formats.add(_FORMATS[suffix])
    if len(formats) > 1:
        raise DataError(f"data folder {uri} mixes CSV and Parquet files; use one format")
    return formats.pop(), files


def read_source(source: str, *, override_num_blocks: int | None = None) -> ray.data.Dataset:
    """A Ray Dataset over the source, rows kept in file order so splits are reproducible."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    # Ray 2.60's v2 Parquet datasource took ~11 s for two small files here against 0.5 s for v1.
    if hasattr(ctx, "use_datasource_v2"):
        ctx.use_datasource_v2 = False
    if source.startswith("builtin://"):
        return ray.data.from_pandas(load_builtin(source.removeprefix("builtin://")))
    fs, path = resolve_filesystem(source)
    fmt, files = detect_format(fs, path, source)
    kwargs: dict[str, Any] = {"filesystem": fs}
    if override_num_blocks:
        kwargs["override_num_blocks"] = override_num_blocks
    if fmt == "csv":
        return ray.data.read_csv(files, **kwargs)
    return ray.data.read_parquet(files, **kwargs)


def source_columns(source: str) -> list[str]:
    """The source's column names from its first file's header or footer, read without Ray.

    Lets a command refuse input that cannot work (missing columns, a model it may not load) before it
    pays for starting Ray.
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if source.startswith("builtin://"):
        return [str(c) for c in load_builtin(source.removeprefix("builtin://")).columns]
    fs, path = resolve_filesystem(source)
    fmt, files = detect_format(fs, path, source)
    try:
        if fmt == "parquet":
            with fs.open_input_file(files[0]) as fh:
                return list(pq.ParquetFile(fh).schema_arrow.names)
        with fs.open_input_stream(files[0]) as stream:
            reader = pacsv.open_csv(
                stream, parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip")
            )
            return list(reader.schema.names)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot read {files[0]}: {err}") from None


def read_frame(source: str) -> pd.DataFrame:
    """The whole source as one pandas frame: for small data and tests only (training never calls it)."""
    if source.startswith("builtin://"):
        return load_builtin(source.removeprefix("builtin://"))
    ds = read_source(source)
    try:
        frame = ds.to_pandas()
    except Exception as err:  # Arrow's parse errors name the file and line; keep them.
        raise DataError(f"cannot read {source}: {err}") from None
    if frame.empty and len(frame.columns) == 0:
        raise DataError(f"data source {source} is empty")
    return frame.reset_index(drop=True)
