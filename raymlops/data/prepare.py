"""From a source to checked, split, preprocessed Ray Datasets, with the driver holding statistics only.

The path ``run`` and ``validate`` share:

1. :func:`check_source`: one pass of Ray tasks profiles every block (:mod:`raymlops.data.profile`);
   the driver merges the profiles, runs every check on them (:func:`~raymlops.data.validate.check_profile`),
   and derives the split plan (:class:`~raymlops.data.split.SplitPlan`) and the fingerprint.
2. :func:`prepare`: a second pass over the training part reduces it to :class:`TrainStats`,
   from which the feature plan is fitted (:func:`~raymlops.data.preprocess.fit_plan`).
3. :class:`PreparedSource` hands out lazy Datasets: the raw rows of a part (evaluation), and the
   training and validation parts as model input (``x``, ``y``, ``row``), computed inside
   ``map_batches`` by the tasks that read the files. Trainers stream them; small sources are
   materialized once into Ray's object store (never into the driver) so epochs do not re-read files.

Builtin datasets (``builtin://digits`` and friends) are small tables bundled with scikit-learn: they
are profiled in-process, so ``raymlops validate`` on them needs no Ray at all.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from raymlops.config import PipelineConfig
from raymlops.data._errors import DataError
from raymlops.data.fingerprint import fingerprint_profile
from raymlops.data.profile import PATH_COLUMN, ProfileSpec, SourceProfile, row_hashes
from raymlops.data.split import TEST, TRAIN, VALIDATION, SplitPlan
from raymlops.data.validate import CheckResult, check_profile, locate, profile_spec
from raymlops.model import FeaturePlan, TableSchema

__all__ = [
    "CheckedSource",
    "PreparedSource",
    "check_source",
    "excluded_columns",
    "model_input",
    "prepare",
]

log = logging.getLogger("raymlops")

HASH_COLUMN = "_h"
_PARTS = {"train": TRAIN, "validation": VALIDATION, "test": TEST}
_MATERIALIZE_BYTES = 256 * 2**20  # sources estimated below this are kept in the object store
_BUILTIN_BLOCKS = 8  # several blocks even for small data: per-epoch shards then differ


def excluded_columns(cfg: PipelineConfig) -> tuple[str, ...]:
    """Columns read but never features: the fairness column unless it is meant as a feature."""
    if cfg.fairness is not None and not cfg.fairness.use_as_feature:
        return (cfg.fairness.sensitive,)
    return ()


@dataclass
class CheckedSource:
    """A source that passed every check, and what the checks learnt about it.

    Attributes:
        source: the pipeline's ``data.source``.
        profile: merged statistics of the whole source.
        check: the schema and the warnings.
        fingerprint: content hash, independent of block layout.
        split: the split plan (and the part sizes per class).
        spec: what the profiling pass tracked (the split's hash key among it).
        seconds: how long the pass took.
    """

    source: str
    profile: SourceProfile
    check: CheckResult
    fingerprint: str
    split: SplitPlan
    spec: ProfileSpec
    seconds: float = 0.0

    @property
    def schema(self) -> TableSchema:
        return self.check.schema

    @property
    def builtin(self) -> bool:
        return self.source.startswith("builtin://")

    def split_sizes(self) -> dict[str, int]:
        return {part: self.split.total(part) for part in ("train", "validation", "test")}


# ------------------------------------------------------------------------------------------------
# the source


def _builtin_table(source: str) -> pa.Table:
    from raymlops.data.ingest import load_builtin

    return pa.Table.from_pandas(load_builtin(source.removeprefix("builtin://")), preserve_index=False)


def source_dataset(source: str) -> Any:
    """The source as a Ray Dataset; file rows carry the file they came from (``path``)."""
    import ray

    from raymlops.data.ingest import detect_format, resolve_filesystem

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    if hasattr(ctx, "use_datasource_v2"):
        ctx.use_datasource_v2 = False  # v2 Parquet took ~11 s for two small files here, v1 0.5 s
    if source.startswith("builtin://"):
        table = _builtin_table(source)
        n = table.num_rows
        bounds = np.linspace(0, n, min(_BUILTIN_BLOCKS, max(1, n)) + 1).astype(int)
        return ray.data.from_arrow(
            [table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        )
    fs, path = resolve_filesystem(source)
    fmt, files = detect_format(fs, path, source)
    kwargs: dict[str, Any] = {"filesystem": fs, "include_paths": True}
    return ray.data.read_csv(files, **kwargs) if fmt == "csv" else ray.data.read_parquet(files, **kwargs)


class _Profile:
    """map_batches: one block -> one row holding its profile."""

    def __init__(self, spec: ProfileSpec) -> None:
        self.spec = spec

    def __call__(self, table: pa.Table) -> dict[str, Any]:
        # bytes, not objects: Ray Data would warn that it falls back to pickling them anyway
        return {"profile": np.array([pickle.dumps(SourceProfile.of_table(table, self.spec))], dtype=object)}


def _profile_dataset(ds: Any, spec: ProfileSpec, source: str) -> SourceProfile:
    total = SourceProfile()
    try:
        profiles = ds.map_batches(
            _Profile(spec), batch_format="pyarrow", batch_size=None, zero_copy_batch=True
        )
        for batch in profiles.iter_batches(batch_size=None, batch_format="numpy"):
            for blob in batch["profile"]:
                total = total.merge(pickle.loads(blob))  # noqa: S301 - written by our own tasks above
    except DataError:
        raise
    except Exception as err:  # Arrow's parse errors name the file and line; keep them.
        raise DataError(f"cannot read {source}: {_root_message(err)}") from None
    return total


def _root_message(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    for line in reversed(text):
        if "Error" in line or "error" in line:
            return line.strip()[:500]
    return (text[-1] if text else repr(err))[:500]


def _locator(source: str) -> Any:
    scheme = source.split("://", 1)[0] + "://" if "://" in source and not source.startswith("file://") else ""

    def find(path: str, column: str, shown: str | None) -> int | None:
        return locate(scheme + path if scheme and "://" not in path else path, column, shown)

    return find


def check_source(cfg: PipelineConfig) -> CheckedSource:
    """Profile and check the whole source; raises DataError/DataValidationError naming the problem."""
    started = time.time()
    spec = profile_spec(cfg.data)
    source = cfg.data.source
    if source.startswith("builtin://"):
        profile = SourceProfile.of_table(_builtin_table(source), spec, offset=0)
        locator = None
    else:
        profile = _profile_dataset(source_dataset(source), spec, source)
        locator = _locator(source)
    if not profile.columns:
        raise DataError(f"data source {source} is empty")
    check = check_profile(
        profile, cfg.data, cfg.validation, source, extra_excluded=excluded_columns(cfg), locator=locator
    )
    split = SplitPlan.from_profile(profile, check.schema, cfg.data.split)
    for part, size in ((p, split.total(p)) for p in ("train", "validation", "test")):
        if size == 0:
            raise DataError(
                f"{source}: the {part} part of the split is empty ({profile.rows} rows); add rows"
            )
    return CheckedSource(
        source=source,
        profile=profile,
        check=check,
        fingerprint=fingerprint_profile(profile),
        split=split,
        spec=spec,
        seconds=time.time() - started,
    )


# ------------------------------------------------------------------------------------------------
# batches -> model input


def _numeric_values(column: pa.ChunkedArray) -> np.ndarray:
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return column.to_pandas().to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(column.to_pandas(), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _category_values(column: pa.ChunkedArray) -> np.ndarray:
    series = column.to_pandas()
    return np.array([None if pd.isna(v) else str(v) for v in series.tolist()], dtype=object)


def raw_features(table: pa.Table, schema: TableSchema) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(numeric float64 matrix in schema order, categorical strings) of a block of checked rows."""
    numeric = schema.numeric
    values = (
        np.column_stack([_numeric_values(table.column(c)) for c in numeric])
        if numeric
        else np.empty((table.num_rows, 0))
    )
    categorical = {c: _category_values(table.column(c)) for c in schema.categorical}
    return values, categorical


def encode_target(values: Any, schema: TableSchema) -> np.ndarray:
    """Class indices (classification) or float32 values (regression) of a target column."""
    series = values.to_pandas() if hasattr(values, "to_pandas") else pd.Series(values)
    if schema.task == "classification":
        lookup = {c: i for i, c in enumerate(schema.classes or [])}
        return series.map(lambda v: lookup.get(v.item() if hasattr(v, "item") else v, -1)).to_numpy(
            dtype=np.int64
        )
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float32)


def model_input(table: pa.Table, schema: TableSchema, plan: FeaturePlan) -> pa.Table:
    """A block of raw rows as the trainers' input: ``x`` (float32 tensor), ``y``, ``row`` (the row's hash)."""
    from ray.data.extensions import ArrowTensorArray

    numeric, categorical = raw_features(table, schema)
    x = plan.apply(numeric, categorical)
    columns = {
        "x": ArrowTensorArray.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        "y": encode_target(table.column(schema.target), schema),
    }
    if HASH_COLUMN in table.column_names:
        columns["row"] = table.column(HASH_COLUMN).to_numpy().view(np.int64)
    return pa.table(columns)


class _Part:
    """map_batches: the rows of one split part, with their hash as ``_h``."""

    def __init__(self, spec: ProfileSpec, split: SplitPlan, target: str, part: int) -> None:
        self.spec, self.split, self.target, self.part = spec, split, target, part

    def __call__(self, table: pa.Table) -> pa.Table:
        data = table.drop_columns([PATH_COLUMN]) if PATH_COLUMN in table.column_names else table
        hashes = row_hashes(data, self.spec)
        parts = self.split.assign(hashes, data.column(self.target).to_pandas().to_numpy(dtype=object))
        keep = parts == self.part
        return data.filter(pa.array(keep)).append_column(HASH_COLUMN, pa.array(hashes[keep], pa.uint64()))


class _ModelInput:
    def __init__(self, schema: TableSchema, plan: FeaturePlan) -> None:
        self.schema, self.plan = schema, plan

    def __call__(self, table: pa.Table) -> pa.Table:
        return model_input(table, self.schema, self.plan)


class _Stats:
    """map_batches: one block of the training part -> its TrainStats (and the target's)."""

    def __init__(self, schema: TableSchema) -> None:
        self.schema = schema

    def __call__(self, table: pa.Table) -> dict[str, Any]:
        from raymlops.data.preprocess import TrainStats

        numeric, categorical = raw_features(table, self.schema)
        names = list(self.schema.numeric)
        if self.schema.task == "regression":
            numeric = np.column_stack([numeric, _numeric_values(table.column(self.schema.target))])
            names.append(self.schema.target)
        return {
            "stats": np.array([pickle.dumps(TrainStats.of_batch(names, numeric, categorical))], dtype=object)
        }


# ------------------------------------------------------------------------------------------------
# the prepared source


@dataclass
class PreparedSource:
    """A checked source with its fitted feature plan, handing out lazy Datasets of its parts.

    Attributes:
        checked: the checks' outcome (schema, split plan, fingerprint).
        plan: the feature plan fitted on the training part.
        stats: the training part's merged statistics.
        materialize: keep part Datasets in the object store (small sources).
    """

    checked: CheckedSource
    plan: FeaturePlan
    stats: Any
    materialize: bool
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def schema(self) -> TableSchema:
        return self.checked.schema

    def rows(self, part: str) -> Any:
        """The raw rows of one part (the source's columns and ``_h``), as a lazy Dataset."""
        key = f"raw:{part}"
        if key not in self._cache:
            ds = source_dataset(self.checked.source).map_batches(
                _Part(self.checked.spec, self.checked.split, self.schema.target, _PARTS[part]),
                batch_format="pyarrow",
                batch_size=None,
                zero_copy_batch=True,
            )
            self._cache[key] = ds.materialize() if self.materialize else ds
        return self._cache[key]

    def inputs(self, part: str) -> Any:
        """One part as model input (``x``, ``y``, ``row``), computed by the tasks that read it."""
        key = f"x:{part}"
        if key not in self._cache:
            ds = self.rows(part).map_batches(
                _ModelInput(self.schema, self.plan),
                batch_format="pyarrow",
                batch_size=None,
                zero_copy_batch=True,
            )
            self._cache[key] = ds.materialize() if self.materialize else ds
        return self._cache[key]

    def training_data(self) -> Any:
        """The train and validation parts as the trainers' :class:`~raymlops.train.TrainingData`."""
        from raymlops.train import TrainingData

        schema = self.schema
        y_mean, y_std = 0.0, 1.0
        if schema.task == "regression":
            column = self.stats.column(schema.target)
            if column is not None:
                y_mean, y_std = column[0], (column[1] if column[1] > 0 else 1.0)
        return TrainingData(
            train=self.inputs("train"),
            val=self.inputs("validation"),
            task=schema.task,
            classes=schema.classes,
            feature_names=self.plan.feature_names,
            n_train=self.checked.split.total("train"),
            n_val=self.checked.split.total("validation"),
            y_mean=y_mean,
            y_std=y_std,
        )


def _estimated_bytes(checked: CheckedSource) -> int:
    return checked.profile.rows * max(1, len(checked.profile.columns)) * 8


def _train_stats(rows: Any, schema: TableSchema) -> Any:
    from raymlops.data.preprocess import TrainStats

    total: TrainStats | None = None
    for batch in rows.map_batches(_Stats(schema), batch_format="pyarrow", batch_size=None).iter_batches(
        batch_size=None, batch_format="numpy"
    ):
        for blob in batch["stats"]:
            part = pickle.loads(blob)  # noqa: S301 - written by our own tasks above
            total = part if total is None else total.merge(part)
    if total is None:
        raise DataError("the training part of the split has no rows")
    return total


def prepare(cfg: PipelineConfig, checked: CheckedSource) -> PreparedSource:
    """Fit the feature plan on the training part (a Ray aggregation) and set up the part Datasets."""
    from raymlops.data.preprocess import fit_plan

    materialize = checked.builtin or _estimated_bytes(checked) <= _MATERIALIZE_BYTES
    prepared = PreparedSource(checked=checked, plan=FeaturePlan([]), stats=None, materialize=materialize)
    prepared.stats = _train_stats(prepared.rows("train"), checked.schema)
    prepared.plan = fit_plan(cfg.preprocess, checked.schema, prepared.stats)
    return prepared

