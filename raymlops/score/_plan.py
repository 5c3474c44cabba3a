"""Planning a scoring job: input files, units of work, and the job record that makes resume safe.

A *unit* is a fixed slice of the input (a CSV file, or a run of row groups of a Parquet file). Its
output is one Parquet file named after the unit, written under a temporary name and renamed into
place when the unit is complete, so a unit's rows are visible exactly once or not at all. The plan
is recorded in ``<output>/_job.json``; ``--resume`` only continues a job whose record matches the
new plan (same model version, same input files, same options), so a rerun can never mix two jobs.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymlops.data.ingest import detect_format, resolve_filesystem
from raymlops.data.schema import TableSchema
from raymlops.errors import ConflictError, InputError

__all__ = ["JOB_FORMAT", "InputFile", "InputLayout", "JobPlan", "ScoreUnit", "csv_job_types", "plan_job"]

JOB_FORMAT = 1
#: Rows read for type inference of CSV input (pyarrow infers from the first block).
CSV_INFER_BYTES = 1 << 20
_FOOTER_THREADS = 16


@dataclass(frozen=True)
class InputFile:
    path: str
    size: int
    mtime_ns: int | None


@dataclass(frozen=True)
class ScoreUnit:
    """One slice of the input, scored as a whole and committed as one output file.

    Args:
        index: position in the plan; names the output (``part-00007.parquet``).
        path: the input file on the input filesystem.
        fmt: ``parquet`` or ``csv``.
        row_groups: the Parquet row groups of this unit (empty for CSV: the whole file).
        first_row: row number, within the file, of the unit's first row.
        rows: rows in the unit when known up front (Parquet footers), else None.
    """

    index: int
    path: str
    fmt: str
    row_groups: tuple[int, ...] = ()
    first_row: int = 0
    rows: int | None = None

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["row_groups"] = list(self.row_groups)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreUnit:
        return cls(**{**data, "row_groups": tuple(data.get("row_groups", ()))})


@dataclass
class JobPlan:
    """Everything that defines a scoring job's output; two runs with equal plans write equal files."""

    model: str
    input: str
    fmt: str
    files: list[InputFile]
    units: list[ScoreUnit]
    columns: list[str]
    keep: list[str]
    output_columns: list[str]
    unknown_category: str
    rejected: str
    csv_types: dict[str, str] = field(default_factory=dict)
    #: Names this job in every part it writes; kept by a resume, so parts of another job are told apart.
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def known_rows(self) -> int | None:
        """Total input rows if every unit's size is known up front (Parquet), else None."""
        sizes = [u.rows for u in self.units]
        return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": JOB_FORMAT,
            "model": self.model,
            "input": self.input,
            "input_format": self.fmt,
            "files": [asdict(f) for f in self.files],
            "units": [u.to_dict() for u in self.units],
            "columns": self.columns,
            "keep": self.keep,
            "output_columns": self.output_columns,
            "unknown_category": self.unknown_category,
            "rejected": self.rejected,
            "csv_types": self.csv_types,
            "job_id": self.job_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobPlan:
        if data.get("format") != JOB_FORMAT:
            raise ConflictError(f"unsupported scoring job record format {data.get('format')!r}")
        return cls(
            model=data["model"],
            input=data["input"],
            fmt=data["input_format"],
            files=[InputFile(**f) for f in data["files"]],
            units=[ScoreUnit.from_dict(u) for u in data["units"]],
            columns=list(data["columns"]),
            keep=list(data["keep"]),
            output_columns=list(data["output_columns"]),
            unknown_category=data["unknown_category"],
            rejected=data["rejected"],
            csv_types=dict(data.get("csv_types", {})),
            job_id=str(data.get("job_id") or ""),
        )

    def differences(self, other: JobPlan) -> list[str]:
        """What differs between this plan and an earlier one (empty when a resume is safe)."""
        mine, theirs = self.to_dict(), other.to_dict()
        labels = {
            "model": "model version",
            "input": "input location",
            "input_format": "input format",
            "files": "input files (names, sizes or modification times)",
            "units": "units of work",
            "keep": "--keep columns",
            "unknown_category": "--unknown-category",
            "rejected": "--rejected location",
            "output_columns": "model outputs",
        }
        return [label for key, label in labels.items() if mine.get(key) != theirs.get(key)]


def _list_files(input_uri: str) -> tuple[pafs.FileSystem, str, list[InputFile]]:
    fs, path = resolve_filesystem(input_uri)
    fmt, paths = detect_format(fs, path, input_uri)
    infos = fs.get_file_info(paths)
    files = [InputFile(i.path, int(i.size or 0), i.mtime_ns) for i in infos]
    return fs, fmt, files


def _parquet_footers(fs: pafs.FileSystem, files: list[InputFile]) -> list[pq.FileMetaData]:
    def read(f: InputFile) -> pq.FileMetaData:
        with fs.open_input_file(f.path) as fh:
            return pq.ParquetFile(fh).metadata

    with ThreadPoolExecutor(max_workers=min(_FOOTER_THREADS, max(1, len(files)))) as pool:
        return list(pool.map(read, files))


def _parquet_units(files: list[InputFile], footers: list[pq.FileMetaData], unit_rows: int) -> list[ScoreUnit]:
    """Consecutive row groups of each file, grouped until a unit holds at least ``unit_rows`` rows."""
    units: list[ScoreUnit] = []
    for f, md in zip(files, footers, strict=True):
        groups: list[int] = []
        rows = first = row = 0
        for rg in range(md.num_row_groups):
            n = md.row_group(rg).num_rows
            if not groups:
                first = row
            groups.append(rg)
            rows += n
            row += n
            if rows >= unit_rows:
                units.append(ScoreUnit(len(units), f.path, "parquet", tuple(groups), first, rows))
                groups, rows = [], 0
        if groups or md.num_row_groups == 0:
            units.append(ScoreUnit(len(units), f.path, "parquet", tuple(groups), first, rows))
    return units


def _csv_header(fs: pafs.FileSystem, path: str) -> pa.Schema:
    with fs.open_input_stream(path) as stream:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=CSV_INFER_BYTES),
            parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip"),  # judged per row later
        )
        return reader.schema


def csv_job_types(first_schema: pa.Schema, schema: TableSchema) -> pa.Schema:
    """Column types every CSV unit is read with, so all output files share one schema.

    Types come from pyarrow's inference on the first file's first block (as training read its CSV),
    except that numeric model features are read as float64 (a later ``1.5`` in an int-looking column
    is a valid feature value) and all-empty columns as strings.
    """
    fields = []
    numeric = set(schema.numeric)
    for fld in first_schema:
        t = fld.type
        if fld.name in numeric:
            t = pa.float64()
        elif pa.types.is_null(t):
            t = pa.string()
        fields.append(pa.field(fld.name, t))
    return pa.schema(fields)


@dataclass
class InputLayout:
    """What the workers need besides the plan: the input filesystem and the Arrow types to write.

    Args:
        filesystem: the input's pyarrow filesystem.
        kept: types of the pass-through columns, the same in every output file.
        csv_read: the types every CSV unit is read with (None for Parquet).
    """

    filesystem: pafs.FileSystem
    kept: pa.Schema
    csv_read: pa.Schema | None


def plan_job(
    *,
    model: str,
    input_uri: str,
    schema: TableSchema,
    output_columns: list[str],
    keep: list[str] | None,
    unknown_category: str,
    rejected: str,
    unit_rows: int,
) -> tuple[JobPlan, InputLayout]:
    """List and inspect the input (footers and headers only), check it can be scored, cut it into units.

    Raises:
        InputError: a model feature is missing from every input file (nothing could be scored), a
            ``--keep`` column is in no file, or a kept column would be overwritten by the model's output.
        DataError: the input cannot be found or read.
    """
    if unknown_category not in ("ignore", "reject"):
        raise InputError(f"unknown_category must be 'ignore' or 'reject', got {unknown_category!r}")
    fs, fmt, files = _list_files(input_uri)
    csv_read: pa.Schema | None = None
    if fmt == "parquet":
        footers = _parquet_footers(fs, files)
        schemas = [md.schema.to_arrow_schema() for md in footers]
        units = _parquet_units(files, footers, unit_rows)
    else:
        schemas = [_csv_header(fs, files[0].path)]
        with ThreadPoolExecutor(max_workers=min(_FOOTER_THREADS, len(files))) as pool:
            schemas += list(pool.map(lambda f: _csv_header(fs, f.path), files[1:]))
        csv_read = csv_job_types(schemas[0], schema)
        units = [ScoreUnit(i, f.path, "csv") for i, f in enumerate(files)]
    columns = list(schemas[0].names)
    everywhere_missing = [c for c in schema.features if all(c not in s.names for s in schemas)]
    if everywhere_missing:
        raise InputError(
            f"missing feature column(s) in every input file: {', '.join(everywhere_missing)} "
            f"(the model expects {len(schema.features)} features: {', '.join(schema.features[:8])}"
            f"{', …' if len(schema.features) > 8 else ''})"
        )
    all_names = {n for s in schemas for n in s.names}
    kept = columns if keep is None else list(dict.fromkeys(keep))
    unknown = [c for c in kept if c not in all_names]
    if unknown:
        raise InputError(f"--keep column(s) not in the input: {', '.join(unknown)}")
    clash = [c for c in kept if c in output_columns]
    if clash:
        raise InputError(
            f"input column(s) {', '.join(clash)} would be overwritten by the model's output; "
            "leave them out with --keep"
        )
    kept_fields = []
    for name in kept:
        source = (
            csv_read
            if csv_read is not None and name in csv_read.names
            else next(s for s in schemas if name in s.names)
        )
        kept_fields.append(source.field(name))
    plan = JobPlan(
        model=model,
        input=input_uri,
        fmt=fmt,
        files=files,
        units=units,
        columns=columns,
        keep=kept,
        output_columns=output_columns,
        unknown_category=unknown_category,
        rejected=rejected,
        csv_types={f.name: str(f.type) for f in csv_read} if csv_read is not None else {},
    )
    return plan, InputLayout(fs, pa.schema(kept_fields), csv_read)
