"""Synthetic classification data at any scale, written as Parquet shards.

Tests and benchmarks need tables of a known size and shape (1M or 10M rows × 50 features) without
downloading anything. Every shard is generated from ``(seed, shard index)`` alone, so the same
command always writes the same bytes whatever the number of workers, and a shard is generated and
written in row-group-sized chunks, so memory does not grow with the number of rows.

Layout of the table: ``id`` (int64, the global row number), ``f_00`` … ``f_<F-1>`` (float features,
the first few informative, the rest noise) and ``label`` (int64 class in ``0 … classes-1``).
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymlops.data.ingest import resolve_filesystem
from raymlops.errors import ConfigError, ConflictError

__all__ = ["DatagenSpec", "feature_names", "generate", "generate_shard", "make_frame"]

#: Rows per Parquet row group: big enough for fast scans, small enough to score in pieces.
DEFAULT_ROW_GROUP_ROWS = 131_072
#: Rows per shard when ``--shards`` is not given.
DEFAULT_SHARD_ROWS = 1_000_000
LABEL = "label"
ID = "id"


@dataclass(frozen=True)
class DatagenSpec:
    """What to generate.

    Args:
        rows: total number of rows.
        features: number of feature columns.
        classes: number of classes of ``label``.
        seed: the seed; the same spec always gives the same table.
        informative: features that carry signal (default: a fifth of them, at least 2).
        bad_rows: rows whose first feature is null, spread evenly over the table, to exercise
            quarantine at scale (row ``i`` is bad when ``i % (rows // bad_rows) == 0``).
        dtype: ``float64`` or ``float32`` for the feature columns.
    """

    rows: int
    features: int
    classes: int = 2
    seed: int = 0
    informative: int | None = None
    bad_rows: int = 0
    dtype: str = "float64"

    def __post_init__(self) -> None:
        if self.rows < 0:
            raise ConfigError(f"rows must be >= 0, got {self.rows}")
        if self.features < 1:
            raise ConfigError(f"features must be >= 1, got {self.features}")
        if self.classes < 2:
            raise ConfigError(f"classes must be >= 2, got {self.classes}")
        if not 0 <= self.bad_rows <= self.rows:
            raise ConfigError(f"bad_rows must be between 0 and rows ({self.rows}), got {self.bad_rows}")
        if self.dtype not in ("float64", "float32"):
            raise ConfigError(f"dtype must be float64 or float32, got {self.dtype!r}")

    @property
    def n_informative(self) -> int:
        if self.informative is not None:
            return max(1, min(self.informative, self.features))
        return min(self.features, max(2, self.features // 5))

    @property
    def bad_every(self) -> int:
        return self.rows // self.bad_rows if self.bad_rows else 0


def feature_names(features: int) -> list[str]:
    """``f_00`` … with a zero-padded width, so the names sort in column order."""
    width = max(2, len(str(features - 1)))
    return [f"f_{i:0{width}d}" for i in range(features)]


def _centroids(spec: DatagenSpec) -> np.ndarray:
    """Class centres on the informative features, drawn from the seed alone (shared by all shards)."""
    rng = np.random.default_rng([spec.seed, 0xC0FFEE])
    return rng.normal(0.0, 0.5, size=(spec.classes, spec.n_informative))


def make_frame(spec: DatagenSpec, start: int, stop: int) -> pa.Table:
    """Rows ``start … stop-1`` of the table, independent of how the table is cut into shards.

    Each row-group-aligned chunk has its own random stream keyed by its first row, so a row's values
    do not depend on the shard layout (re-sharding the same spec gives the same rows).
    """
    centroids = _centroids(spec)
    names = feature_names(spec.features)
    parts = []
    chunk = DEFAULT_ROW_GROUP_ROWS
    first_chunk = start // chunk
    for c in range(first_chunk, (stop + chunk - 1) // chunk if stop > start else first_chunk):
        lo, hi = max(start, c * chunk), min(stop, (c + 1) * chunk)
        rng = np.random.default_rng([spec.seed, c])
        n_chunk = min(chunk, spec.rows - c * chunk)
        y_all = rng.integers(0, spec.classes, size=n_chunk)
        X_all = rng.standard_normal(size=(n_chunk, spec.features))
        X_all[:, : spec.n_informative] += centroids[y_all]
        sl = slice(lo - c * chunk, hi - c * chunk)
        parts.append((np.arange(lo, hi, dtype=np.int64), X_all[sl].astype(spec.dtype), y_all[sl]))
    if parts:
        ids = np.concatenate([p[0] for p in parts])
        X = np.concatenate([p[1] for p in parts])
        y = np.concatenate([p[2] for p in parts]).astype(np.int64)
    else:
        ids, X, y = np.zeros(0, np.int64), np.zeros((0, spec.features), spec.dtype), np.zeros(0, np.int64)
    columns: dict[str, pa.Array] = {ID: pa.array(ids)}
    bad = (ids % spec.bad_every == 0) & (ids // spec.bad_every < spec.bad_rows) if spec.bad_every else None
    for j, name in enumerate(names):
        col = np.ascontiguousarray(X[:, j])
        columns[name] = pa.array(col, mask=bad) if (j == 0 and bad is not None) else pa.array(col)
    columns[LABEL] = pa.array(y)
    return pa.table(columns)


def generate_shard(
    spec: DatagenSpec,
    start: int,
    stop: int,
    filesystem: pafs.FileSystem,
    path: str,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
) -> int:
    """Write rows ``start … stop-1`` to ``path``, chunk by chunk, under a temporary name first.

    Readers skip dot-files, so a shard is either absent or complete, even if the writer dies.
    """
    folder, _, base = path.rpartition("/")
    tmp = f"{folder}/.{base}.tmp-{uuid.uuid4().hex}"
    writer: pq.ParquetWriter | None = None
    try:
        for lo in range(start, stop, row_group_rows) if stop > start else [start]:
            table = make_frame(spec, lo, min(stop, lo + row_group_rows))
            if writer is None:
                floats_plain = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
                writer = pq.ParquetWriter(
                    tmp, table.schema, filesystem=filesystem, use_dictionary=floats_plain
                )
            writer.write_table(table, row_group_size=row_group_rows)
        if writer is not None:
            writer.close()
            writer = None
        filesystem.move(tmp, path)
    except BaseException:
        if writer is not None:
            writer.close()
        with contextlib.suppress(OSError):
            filesystem.delete_file(tmp)
        raise
    return stop - start


def _shard_bounds(rows: int, shards: int) -> list[tuple[int, int]]:
    """Cut ``rows`` into ``shards`` contiguous ranges that differ in size by at most one row."""
    base, extra = divmod(rows, shards)
    bounds, lo = [], 0
    for i in range(shards):
        hi = lo + base + (1 if i < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def generate(
    spec: DatagenSpec,
    output: str,
    *,
    shards: int | None = None,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    overwrite: bool = False,
    use_ray: bool | None = None,
) -> dict[str, Any]:
    """Write the table to ``output`` (a folder on any pyarrow filesystem) as ``part-NNNNN.parquet``.

    Args:
        spec: what to generate.
        output: folder path or URI.
        shards: number of files (default one per million rows).
        row_group_rows: rows per Parquet row group.
        overwrite: replace Parquet files already in ``output``; without it a non-empty output is refused
            so a typo cannot mix two tables in one folder.
        use_ray: generate shards as Ray tasks (default: when Ray is initialized), e.g. on a cluster
            writing to a shared filesystem.

    Returns:
        A summary: output, rows, features, classes, shards, files, bytes, seconds.
    """
    started = time.perf_counter()
    n_shards = shards if shards is not None else max(1, math.ceil(spec.rows / DEFAULT_SHARD_ROWS))
    if n_shards < 1:
        raise ConfigError(f"shards must be >= 1, got {n_shards}")
    if row_group_rows < 1:
        raise ConfigError(f"row_group_rows must be >= 1, got {row_group_rows}")
    n_shards = min(n_shards, max(1, spec.rows))
    fs, root = resolve_filesystem(output)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise ConfigError(f"datagen output {output} is a file; give a folder")
    existing = [
        f.path
        for f in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
    ]
    if existing:
        if not overwrite:
            raise ConflictError(
                f"datagen output {output} already holds Parquet files; pass --overwrite to replace them"
            )
        for path in existing:
            fs.delete_file(path)
    fs.create_dir(root, recursive=True)
    bounds = _shard_bounds(spec.rows, n_shards)
    paths = [f"{root.rstrip('/')}/part-{i:05d}.parquet" for i in range(n_shards)]

    import ray

    if use_ray is None:
        use_ray = ray.is_initialized()
    if use_ray and n_shards > 1:
        task = ray.remote(num_cpus=1, max_retries=2)(generate_shard)
        pending = [
            task.remote(spec, lo, hi, fs, p, row_group_rows)
            for (lo, hi), p in zip(bounds, paths, strict=True)
        ]
        written = sum(ray.get(pending))
    else:
        written = sum(
            generate_shard(spec, lo, hi, fs, p, row_group_rows)
            for (lo, hi), p in zip(bounds, paths, strict=True)
        )
    size = sum(fs.get_file_info(p).size or 0 for p in paths)
    return {
        "output": output,
        "rows": written,
        "features": spec.features,
        "classes": spec.classes,
        "bad_rows": spec.bad_rows,
        "shards": n_shards,
        "files": [p.rsplit("/", 1)[-1] for p in paths],
        "bytes": size,
        "seconds": round(time.perf_counter() - started, 3),
        "spec": asdict(spec),
    }
