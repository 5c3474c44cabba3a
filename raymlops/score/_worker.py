"""Scoring one unit of work: stream it in batches, check, predict, write, commit.

This runs inside the actors of the Ray Data pipeline (the model is loaded once per actor), and is
plain Python otherwise, so it can be tested without Ray. Memory per actor is bounded by the batch
size, not by the size of the unit or of the job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymlops.errors import InputError
from raymlops.model import ModelBundle, ScoredRows
from raymlops.model import prediction_schema as _prediction_schema
from raymlops.registry._fsutil import remove_quietly

from ._output import UNIT_METADATA_KEY, OutputLocation, UnitResult, commit_unit, part_metadata
from ._plan import InputLayout, ScoreUnit

__all__ = [
    "REASON",
    "ROW",
    "SOURCE",
    "UnitScorer",
    "WorkerConfig",
    "prediction_schema",
    "score_unit",
]

log = logging.getLogger("raymlops.score")

REASON = "_reason"
SOURCE = "_source"
ROW = "_row"
#: Bytes pyarrow's CSV reader parses at a time (one batch of rows per block).
CSV_BLOCK_BYTES = 16 << 20


@dataclass(frozen=True)
class WorkerConfig:
    """What every actor needs; picklable, built once by the driver.

    Args:
        model: the exact ``NAME:VERSION`` (never an alias: every actor must load the same version).
        store: the model store URI.
        kind: the model kind (for sizing the actor pool).
        keep: the pass-through columns, in order.
        unknown_category: ``ignore`` or ``reject`` (see :meth:`ModelBundle.score`).
        layout: the input filesystem and the Arrow types of kept columns and CSV reads.
        out: where scored parts go.
        rejected: where rejected parts go.
        batch_rows: rows per batch inside a unit (bounds the memory of an actor).
        threads: CPU threads an actor may use (Arrow decoding, model inference).
        unit_delay_s: a pause before each unit, for tests that kill a run midway and demos.
        job_id: the job's identity, written into every part's footer (see :class:`JobPlan`).
        allow_legacy_pickle: load a version written with pickled model files (user opt-in).
    """

    model: str
    store: str
    kind: str
    keep: list[str]
    unknown_category: str
    layout: InputLayout
    out: OutputLocation
    rejected: OutputLocation
    batch_rows: int = 65_536
    threads: int = 1
    unit_delay_s: float = 0.0
    job_id: str = ""
    allow_legacy_pickle: bool = False


def prediction_schema(bundle: ModelBundle) -> pa.Schema:
    """Arrow types of the model's output columns (defined once, in the model layer)."""
    schema: pa.Schema = _prediction_schema(bundle.schema)
    return schema


def _dictionary(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary-encoding: text, which repeats (labels, categories, codes).

    Numbers are written plain: floats rarely repeat, and an id-like integer column fills the
    dictionary page before Arrow falls back to plain, which cost 60% more write time per batch.
    """
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_dictionary)
    return [f.name for f in schema if any(is_type(f.type) for is_type in text)]


class _CsvConversionError(Exception):
    """A CSV value does not convert to the column's type: the unit is re-read tolerantly."""


@dataclass
class _Malformed:
    line: int | None
    text: str
    expected: int
    actual: int


def _parquet_batches(unit: ScoreUnit, cfg: WorkerConfig) -> Iterator[pa.Table]:
    """The unit's rows in batches, holding one row group's bytes at a time.

    pyarrow pre-buffers by default: it keeps the raw bytes of every row group an ``iter_batches``
    call asks for until the call ends (the whole unit: 208 MB of a 500,000 x 50 float unit, per
    actor) and it read 2.5x slower here. Local files are read without it; remote ones keep it,
    since coalesced ranges save round trips, but row group by row group so the cache stays small.
    """
    fs = cfg.layout.filesystem
    with fs.open_input_file(unit.path) as fh:
        pf = pq.ParquetFile(fh, pre_buffer=not isinstance(fs, pafs.LocalFileSystem))
        for group in unit.row_groups:
            for batch in pf.iter_batches(batch_size=cfg.batch_rows, row_groups=[group]):
                yield pa.Table.from_batches([batch])


def _csv_batches(
    unit: ScoreUnit, cfg: WorkerConfig, tolerant: bool, malformed: list[_Malformed]
) -> Iterator[pa.Table]:
    """Batches of a CSV file; typed with the job's types, or (tolerant) every column as text."""
    read_schema = cfg.layout.csv_read
    assert read_schema is not None

    def on_invalid(row: Any) -> str:
        malformed.append(
            _Malformed(row.number, str(row.text), int(row.expected_columns), int(row.actual_columns))
        )
        return "skip"

    types = {f.name: (pa.string() if tolerant else f.type) for f in read_schema}
    convert = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True)
    read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False)
    parse = pacsv.ParseOptions(invalid_row_handler=on_invalid)
    with cfg.layout.filesystem.open_input_stream(unit.path) as stream:
        try:  # the reader converts its first block when it opens
            reader = pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid as err:
            if tolerant:
                raise
            raise _CsvConversionError(str(err)) from err
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as err:
                if tolerant:
                    raise
                raise _CsvConversionError(str(err)) from err
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= cfg.batch_rows:
                yield pa.Table.from_batches(pending)
                pending, pending_rows = [], 0
        if pending:
            yield pa.Table.from_batches(pending)


def _castable(value: str, target: pa.DataType) -> bool:
    try:
        pa.array([value], pa.string()).cast(target)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False


def _tolerant_cast(column: pa.ChunkedArray, target: pa.DataType) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Cast text to ``target``; values that do not convert become null and are flagged."""
    try:
        return column.cast(target), np.zeros(len(column), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    bad_values = [v for v in pc.unique(column.drop_null()).to_pylist() if not _castable(v, target)]
    bad = pc.fill_null(pc.is_in(column, value_set=pa.array(bad_values, pa.string())), False)
    cleaned = pc.if_else(bad, pa.scalar(None, pa.string()), column)
    return cleaned.cast(target), np.asarray(bad.to_numpy(zero_copy_only=False), dtype=bool)


class _Unit:
    """Writers and counters of one attempt at one unit."""

    def __init__(
        self, bundle: ModelBundle, unit: ScoreUnit, cfg: WorkerConfig, pred_schema: pa.Schema
    ) -> None:
        self.bundle = bundle
        self.unit = unit
        self.cfg = cfg
        self.pred_schema = pred_schema
        self.kept_schema = cfg.layout.kept
        self.out_schema = pa.schema([*cfg.layout.kept, *pred_schema])
        cfg.out.make_tmp_dir()
        self.scored_tmp = cfg.out.tmp_file(unit)
        self.rejected_tmp: str | None = None
        self.writer = pq.ParquetWriter(
            self.scored_tmp,
            self.out_schema,
            filesystem=cfg.out.filesystem,
            use_dictionary=_dictionary(self.out_schema),
        )
        self.rejected_writer: pq.ParquetWriter | None = None
        self.rejected_schema: pa.Schema | None = None
        self.rows_in = self.scored = self.rejected = 0
        self.features = list(bundle.schema.features)
        self.numeric = set(bundle.schema.numeric)

    # ---- one batch -----------------------------------------------------------------------------
    def _convert(self, raw: pa.Table) -> tuple[pa.Table, np.ndarray]:
        """Tolerant CSV: give text columns their job types; values that do not convert are flagged.

        Numeric features stay text: :meth:`ModelBundle.score` parses them and names the bad value.
        """
        read_schema = self.cfg.layout.csv_read
        assert read_schema is not None
        extra = np.full(raw.num_rows, None, dtype=object)
        table = raw
        for i, name in enumerate(raw.column_names):
            if name not in read_schema.names or name in self.numeric:
                continue
            target = read_schema.field(name).type
            if pa.types.is_string(target):
                continue
            converted, bad = _tolerant_cast(raw.column(i), target)
            table = table.set_column(i, name, converted)
            for row in np.flatnonzero(bad):
                if extra[row] is None:
                    extra[row] = f"{name}: {raw.column(i)[int(row)].as_py()!r} is not a valid {target}"
        return table, extra

    def add(self, raw: pa.Table, tolerant: bool) -> None:
        n = raw.num_rows
        first_row = self.unit.first_row + self.rows_in
        self.rows_in += n
        if n == 0:
            return
        table, extra = self._convert(raw) if tolerant else (raw, None)
        present = [c for c in self.features if c in table.column_names]
        scored: ScoredRows | None = None
        try:
            scored = self.bundle.score(table.select(present), unknown_category=self.cfg.unknown_category)  # type: ignore[arg-type]
            valid = scored.valid
            reasons = (
                scored.check.reasons if scored.check.reasons is not None else np.full(n, None, dtype=object)
            )
        except InputError as err:  # a feature column missing from this file: none of its rows can be scored
            reasons, valid = np.full(n, str(err), dtype=object), np.zeros(n, dtype=bool)
        if extra is not None:
            has_extra = np.array([e is not None for e in extra], dtype=bool)
            if has_extra.any():
                reasons = np.where(valid & has_extra, extra, reasons)
                valid = valid & ~has_extra
        n_valid = int(valid.sum())
        if n_valid and scored is not None:
            self._write_scored(table, scored, valid)
            self.scored += n_valid
        if n_valid < n:
            bad_rows = raw if n_valid == 0 else raw.filter(pa.array(~valid))
            rows = np.arange(first_row, first_row + n, dtype=np.int64)[~valid]
            self._reject(bad_rows, [str(r) for r in reasons[~valid]], pa.array(rows))

    def _write_scored(self, table: pa.Table, scored: ScoredRows, valid: np.ndarray) -> None:
        """Kept columns and predictions of the valid rows (``valid`` may be narrower than the model's)."""
        keep = valid[scored.valid]  # of the rows the model scored, those still valid after CSV conversion
        preds = scored.to_arrow()
        if not keep.all():
            preds = preds.filter(pa.array(keep))
        mask = None if valid.all() else pa.array(valid)
        numeric_pos = {c: j for j, c in enumerate(self.bundle.schema.numeric)}
        arrays: list[pa.Array | pa.ChunkedArray] = []
        for fld in self.kept_schema:
            if fld.name not in table.column_names:
                arrays.append(pa.nulls(preds.num_rows, fld.type))
                continue
            col = table.column(fld.name)
            if col.type != fld.type and fld.name in numeric_pos:  # CSV text: the value as parsed
                parsed = scored.check.numeric[valid, numeric_pos[fld.name]]
                arrays.append(pa.array(parsed).cast(fld.type))
                continue
            if mask is not None:
                col = col.filter(mask)
            arrays.append(col if col.type == fld.type else col.cast(fld.type))
        arrays.extend(preds.columns)
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.out_schema))

    def _reject(self, rows: pa.Table, reasons: list[str], row_numbers: pa.Array) -> None:
        table = (
            rows.append_column(REASON, pa.array(reasons, pa.string()))
            .append_column(SOURCE, pa.array([self.unit.path] * rows.num_rows, pa.string()))
            .append_column(ROW, row_numbers.cast(pa.int64()))
        )
        if self.rejected_writer is None:
            self.rejected_schema = table.schema
            self.rejected_tmp = self.cfg.rejected.tmp_file(self.unit)
            self.cfg.rejected.make_tmp_dir()
            self.rejected_writer = pq.ParquetWriter(
                self.rejected_tmp,
                table.schema,
                filesystem=self.cfg.rejected.filesystem,
                use_dictionary=_dictionary(table.schema),
            )
        else:
            assert self.rejected_schema is not None
            table = table.select(self.rejected_schema.names).cast(self.rejected_schema)
        self.rejected_writer.write_table(table)
        self.rejected += rows.num_rows

    def add_malformed(self, malformed: list[_Malformed]) -> None:
        """Rows the CSV parser could not split into fields: quarantined with their text as the reason."""
        if not malformed:
            return
        self.rows_in += len(malformed)
        schema = self.rejected_schema or pa.schema(
            [pa.field(name, pa.string()) for name in self.cfg.layout.csv_read.names]  # type: ignore[union-attr]
        )
        columns = [n for n in schema.names if n not in (REASON, SOURCE, ROW)]
        empty = pa.table({name: pa.nulls(len(malformed), schema.field(name).type) for name in columns})
        reasons = [
            f"malformed CSV row{f' at line {m.line}' if m.line is not None else ''}: expected {m.expected} "
            f"fields, found {m.actual}: {m.text[:200]!r}"
            for m in malformed
        ]
        self._reject(empty, reasons, pa.nulls(len(malformed), pa.int64()))

    # ---- end -----------------------------------------------------------------------------------
    def finish(self, seconds: float) -> UnitResult:
        result = UnitResult(self.unit.index, self.rows_in, self.scored, self.rejected, round(seconds, 3))
        if self.rows_in != self.scored + self.rejected:  # a bug, never a data problem: refuse to commit
            raise RuntimeError(f"unit {self.unit.index}: {result} does not add up")
        owner = part_metadata(self.cfg.job_id, self.cfg.model)
        self.writer.add_key_value_metadata({UNIT_METADATA_KEY: result.to_json(), **owner})
        self.writer.close()
        if self.rejected_writer is not None:
            self.rejected_writer.add_key_value_metadata(owner)
            self.rejected_writer.close()
        commit_unit(self.cfg.out, self.cfg.rejected, self.unit, self.scored_tmp, self.rejected_tmp)
        return result

    def abort(self) -> None:
        for writer in (self.writer, self.rejected_writer):
            if writer is not None:
                with contextlib.suppress(Exception):  # already failing; the temp files are removed next
                    writer.close()
        remove_quietly(self.cfg.out.filesystem, self.scored_tmp)
        if self.rejected_tmp is not None:
            remove_quietly(self.cfg.rejected.filesystem, self.rejected_tmp)


def score_unit(bundle: ModelBundle, unit: ScoreUnit, cfg: WorkerConfig, pred_schema: pa.Schema) -> UnitResult:
    """Score one unit and commit its files; safe to run again for the same unit (files are replaced).

    CSV is first read with the job's column types (fast); if a value does not convert (a word in a
    numeric column), the unit is read again with every column as text and each row is judged on
    its own, so one bad value rejects one row, not the file.
    """
    started = time.perf_counter()
    if cfg.unit_delay_s:
        time.sleep(cfg.unit_delay_s)
    attempts = (False, True) if unit.fmt == "csv" else (False,)
    for tolerant in attempts:
        work = _Unit(bundle, unit, cfg, pred_schema)
        malformed: list[_Malformed] = []
        try:
            batches = (
                _csv_batches(unit, cfg, tolerant, malformed)
                if unit.fmt == "csv"
                else _parquet_batches(unit, cfg)
            )
            for table in batches:
                work.add(table, tolerant)
            work.add_malformed(malformed)
            return work.finish(time.perf_counter() - started)
        except _CsvConversionError:
            work.abort()
            continue
        except BaseException:
            work.abort()
            raise
    raise AssertionError("unreachable: the tolerant CSV attempt raises or returns")


class UnitScorer:
    """The Ray Data callable class: one model per actor, one unit per call.

    Each input row names a unit (its JSON); each output row is that unit's counts, which the driver
    turns into progress, or the error that stopped it. Errors are returned, not raised, so one bad
    unit does not abort the others (they commit and a resume redoes only the failed ones) and the
    user sees the real message instead of Ray's wrapper around it. The files are written and
    committed here, next to the model.
    """

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.error: str | None = None
        try:
            pa.set_cpu_count(max(1, cfg.threads))
            self.bundle = ModelBundle.load(  # verified by the registry
                cfg.model, cfg.store, threads=cfg.threads, allow_legacy_pickle=cfg.allow_legacy_pickle or None
            )
            self.pred_schema = prediction_schema(self.bundle)
        except Exception as err:  # reported with every unit of this actor, see __call__
            log.exception("loading %s failed", cfg.model)
            self.error = f"loading {cfg.model} failed: {type(err).__name__}: {err}"

    def _one(self, spec: str) -> dict[str, Any]:
        unit = ScoreUnit.from_dict(json.loads(spec))
        row: dict[str, Any] = {
            "index": unit.index,
            "rows_in": -1,
            "scored": -1,
            "rejected": -1,
            "seconds": 0.0,
        }
        if self.error is not None:
            return {**row, "error": self.error}
        try:
            result = score_unit(self.bundle, unit, self.cfg, self.pred_schema)
        except Exception as err:
            log.exception("unit %s (%s) failed", unit.index, unit.path)
            return {**row, "error": f"{type(err).__name__}: {err}"}
        return {**asdict(result), "error": ""}

    def __call__(self, batch: dict[str, np.ndarray]) -> pd.DataFrame:
        return pd.DataFrame([self._one(str(spec)) for spec in batch["unit"]])
