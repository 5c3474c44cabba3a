"""The output folder of a scoring job: committing units exactly once, and reconciling the counts.

Layout (``<rejected>`` defaults to ``<output>/_rejected``)::

    <output>/part-00000.parquet      scored rows of unit 0: kept input columns, prediction, proba_<class>
    <output>/_job.json               the plan, written before any unit starts (what --resume checks)
    <output>/_manifest.json          counts per unit and in total, written once everything reconciles
    <output>/_SUCCESS                empty marker, written last
    <output>/_tmp/                   files of units in flight (removed at the end)
    <rejected>/part-00000.parquet    rejected rows of unit 0 (only units that had any): input columns,
                                     _reason, _source, _row

A unit is committed by renaming its finished files into place, rejected rows first and scored rows
last. The scored file is the commit record: it always exists for a finished unit (even with no
rows) and carries the unit's counts in its Parquet footer, so a resumed run learns what is done by
reading footers, and a unit killed between the two renames is simply scored again and its files
replaced, never appended to.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymlops.data.ingest import resolve_filesystem
from raymlops.errors import ConflictError
from raymlops.registry._fsutil import join_path, list_children, remove_quietly, write_json_atomic

from ._plan import JobPlan, ScoreUnit

__all__ = [
    "JOB_FILE",
    "MANIFEST_FILE",
    "SUCCESS_FILE",
    "JOB_METADATA_KEY",
    "LOCK_DIR",
    "MODEL_METADATA_KEY",
    "UNIT_METADATA_KEY",
    "OutputLocation",
    "Reconciliation",
    "UnitResult",
    "commit_unit",
    "committed_units",
    "overlapping",
    "part_metadata",
    "reconcile",
]

JOB_FILE = "_job.json"
MANIFEST_FILE = "_manifest.json"
SUCCESS_FILE = "_SUCCESS"
TMP_DIR = "_tmp"
UNIT_METADATA_KEY = "raymlops.score.unit"
#: Footer keys naming the job (its ``job_id``) and the exact model version a part was written by.
JOB_METADATA_KEY = "raymlops.score.job"
MODEL_METADATA_KEY = "raymlops.score.model"
#: The folder of the lease lock that keeps a second writer out of an output.
LOCK_DIR = "_lock"
_PART = re.compile(r"^part-(\d{5,})\.parquet$")
_THREADS = 16


def absolute_uri(uri: str) -> str:
    """A URI that means the same file wherever it is used (Ray workers may run in another directory)."""
    if "://" in uri:
        return uri
    return os.path.abspath(uri)


@dataclass(frozen=True)
class OutputLocation:
    """A folder on a pyarrow filesystem that receives one kind of part files."""

    uri: str
    filesystem: pafs.FileSystem
    path: str

    @classmethod
    def of(cls, uri: str) -> OutputLocation:
        uri = absolute_uri(uri)
        fs, path = resolve_filesystem(uri)
        return cls(uri, fs, path.rstrip("/") or "/")

    def file(self, *parts: str) -> str:
        return join_path(self.path, *parts)

    def part(self, unit: ScoreUnit | int) -> str:
        index = unit if isinstance(unit, int) else unit.index
        return self.file(f"part-{index:05d}.parquet")

    def tmp_file(self, unit: ScoreUnit) -> str:
        """A fresh temporary name, so two attempts at one unit never write the same file."""
        return self.file(TMP_DIR, f"{unit.name}.{uuid.uuid4().hex}.parquet")

    def make_tmp_dir(self) -> None:
        self.filesystem.create_dir(self.file(TMP_DIR), recursive=True)

    def clear_tmp(self) -> None:
        remove_quietly(self.filesystem, self.file(TMP_DIR))

    def parts(self) -> dict[int, pafs.FileInfo]:
        """The committed part files, by unit index."""
        found: dict[int, pafs.FileInfo] = {}
        for info in list_children(self.filesystem, self.path):
            m = _PART.match(info.base_name)
            if m and info.type == pafs.FileType.File:
                found[int(m.group(1))] = info
        return found

    def exists(self) -> bool:
        return bool(self.filesystem.get_file_info(self.path).type != pafs.FileType.NotFound)

    def entries(self) -> list[pafs.FileInfo]:
        return list_children(self.filesystem, self.path)


@dataclass(frozen=True)
class UnitResult:
    """The counts of one committed unit (stored in its scored file's footer)."""

    index: int
    rows_in: int
    scored: int
    rejected: int
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> UnitResult:
        return cls(**json.loads(text))


def commit_unit(
    out: OutputLocation, rej: OutputLocation, unit: ScoreUnit, scored_tmp: str, rejected_tmp: str | None
) -> None:
    """Rename a finished unit's files into place: rejected rows first, the scored file (the record) last."""
    if rejected_tmp is not None:
        rej.filesystem.move(rejected_tmp, rej.part(unit))
    else:
        remove_quietly(rej.filesystem, rej.part(unit))  # a stale file from an earlier, killed attempt
    out.filesystem.move(scored_tmp, out.part(unit))


def _footer(fs: pafs.FileSystem, path: str) -> pq.FileMetaData:
    with fs.open_input_file(path) as fh:
        return pq.ParquetFile(fh).metadata


def _unit_result(md: pq.FileMetaData) -> UnitResult | None:
    raw = (md.metadata or {}).get(UNIT_METADATA_KEY.encode())
    if raw is None:
        return None
    try:
        return UnitResult.from_json(raw)
    except (ValueError, TypeError):
        return None


def _footers(fs: pafs.FileSystem, paths: dict[int, str]) -> dict[int, pq.FileMetaData | Exception]:
    def read(item: tuple[int, str]) -> tuple[int, pq.FileMetaData | Exception]:
        try:
            return item[0], _footer(fs, item[1])
        except Exception as err:  # a truncated or foreign file is reported, not raised
            return item[0], err

    with ThreadPoolExecutor(max_workers=min(_THREADS, max(1, len(paths)))) as pool:
        return dict(pool.map(read, paths.items()))


def part_metadata(job_id: str, model: str) -> dict[str, str]:
    """The footer entries that tie a part file to its job and model version."""
    return {JOB_METADATA_KEY: job_id, MODEL_METADATA_KEY: model}


def _owner(md: pq.FileMetaData) -> tuple[str, str]:
    meta = md.metadata or {}
    job = meta.get(JOB_METADATA_KEY.encode(), b"").decode("utf-8", "replace")
    model = meta.get(MODEL_METADATA_KEY.encode(), b"").decode("utf-8", "replace")
    return job, model


def _foreign(path: str, md: pq.FileMetaData, plan: JobPlan) -> str | None:
    """Why ``path`` belongs to another job or model version than ``plan``'s, or None when it is ours."""
    job, model = _owner(md)
    if model != plan.model:
        return f"{path} was written with model {model or '(unknown)'}, this job scores with {plan.model}"
    if job != plan.job_id:
        return f"{path} was written by another scoring job ({job or 'unknown'}, this job is {plan.job_id})"
    return None


def committed_units(out: OutputLocation, plan: JobPlan) -> tuple[dict[int, UnitResult], list[str]]:
    """Units of ``plan`` whose scored file is in place with readable counts (what --resume skips).

    Returns:
        The committed units, and a description of every part that belongs to another job or model
        version (a resume must refuse those rather than mix them into this job's output).
    """
    planned = {u.index for u in plan.units}
    parts = {i: info.path for i, info in out.parts().items() if i in planned}
    done: dict[int, UnitResult] = {}
    foreign: list[str] = []
    for index, md in _footers(out.filesystem, parts).items():
        if isinstance(md, Exception):
            continue
        result = _unit_result(md)
        if result is None or result.index != index:
            continue
        why = _foreign(parts[index], md, plan)
        if why is not None:
            foreign.append(why)
            continue
        done[index] = result
    return done, foreign


@dataclass
class Reconciliation:
    """Counts read back from the files on disk, and every way they disagree with the plan."""

    rows_in: int
    rows_scored: int
    rows_rejected: int
    units: list[UnitResult]
    scored_files: int
    rejected_files: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_scored": self.rows_scored,
            "rows_rejected": self.rows_rejected,
            "scored_files": self.scored_files,
            "rejected_files": self.rejected_files,
            "units": [asdict(u) for u in self.units],
        }


def reconcile(plan: JobPlan, out: OutputLocation, rej: OutputLocation) -> Reconciliation:
    """Check, from the Parquet footers alone, that every input row is in exactly one output file.

    For each unit: the scored file exists and its row count matches its recorded count; a rejected
    file exists exactly when rows were rejected and holds that many rows; rows in = scored + rejected;
    and for Parquet input, rows in = the rows the input footers announced. No file outside the plan
    may sit among the parts.
    """
    problems: list[str] = []
    scored_parts = {i: info.path for i, info in out.parts().items()}
    rejected_parts = {i: info.path for i, info in rej.parts().items()}
    planned = {u.index: u for u in plan.units}
    for extra in sorted(set(scored_parts) - set(planned)):
        problems.append(f"{scored_parts[extra]} is not part of this job")
    for extra in sorted(set(rejected_parts) - set(planned)):
        problems.append(f"{rejected_parts[extra]} is not part of this job")
    scored_md = _footers(out.filesystem, {i: p for i, p in scored_parts.items() if i in planned})
    rejected_md = _footers(rej.filesystem, {i: p for i, p in rejected_parts.items() if i in planned})
    results: list[UnitResult] = []
    total_in = total_scored = total_rejected = 0
    for index, unit in sorted(planned.items()):
        md = scored_md.get(index)
        if md is None:
            problems.append(f"unit {index} ({unit.path}) has no output file")
            continue
        if isinstance(md, Exception):
            problems.append(f"{scored_parts[index]} cannot be read: {md}")
            continue
        result = _unit_result(md)
        if result is None:
            problems.append(f"{scored_parts[index]} carries no unit counts (not written by raymlops score)")
            continue
        why = _foreign(scored_parts[index], md, plan)
        if why is not None:
            problems.append(why)
            continue
        results.append(result)
        if md.num_rows != result.scored:
            problems.append(
                f"{scored_parts[index]} holds {md.num_rows} rows, its unit recorded {result.scored}"
            )
        rmd = rejected_md.get(index)
        n_rejected_file = 0
        if isinstance(rmd, Exception):
            problems.append(f"{rejected_parts[index]} cannot be read: {rmd}")
        elif rmd is not None:
            n_rejected_file = rmd.num_rows
            why = _foreign(rejected_parts[index], rmd, plan)
            if why is not None:
                problems.append(why)
        if n_rejected_file != result.rejected:
            problems.append(
                f"unit {index}: {n_rejected_file} rejected rows on disk, its unit recorded {result.rejected}"
            )
        if result.rows_in != result.scored + result.rejected:
            problems.append(
                f"unit {index}: rows in {result.rows_in} != "
                f"scored {result.scored} + rejected {result.rejected}"
            )
        if unit.rows is not None and result.rows_in != unit.rows:
            problems.append(
                f"unit {index} ({unit.path}): read {result.rows_in} rows, the input holds {unit.rows}"
            )
        total_in += result.rows_in
        total_scored += md.num_rows
        total_rejected += n_rejected_file
    if total_in != total_scored + total_rejected and not problems:
        problems.append(f"rows in {total_in} != scored {total_scored} + rejected {total_rejected}")
    return Reconciliation(
        rows_in=total_in,
        rows_scored=total_scored,
        rows_rejected=total_rejected,
        units=results,
        scored_files=len([i for i in scored_parts if i in planned]),
        rejected_files=len([i for i in rejected_parts if i in planned]),
        problems=problems,
    )


def write_manifest(out: OutputLocation, payload: dict[str, Any]) -> None:
    """The manifest, then the ``_SUCCESS`` marker: tools that wait for ``_SUCCESS`` see a finished job."""
    write_json_atomic(out.filesystem, out.file(MANIFEST_FILE), payload)
    with out.filesystem.open_output_stream(out.file(SUCCESS_FILE)) as fh:
        fh.write(b"")


def read_job(out: OutputLocation) -> dict[str, Any] | None:
    path = out.file(JOB_FILE)
    if out.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with out.filesystem.open_input_stream(path, compression=None) as fh:
        data: dict[str, Any] = json.loads(fh.read().decode("utf-8"))
    return data


def write_job(out: OutputLocation, plan: JobPlan) -> None:
    out.filesystem.create_dir(out.path, recursive=True)
    write_json_atomic(out.filesystem, out.file(JOB_FILE), plan.to_dict())


def clear_outputs(out: OutputLocation, rej: OutputLocation) -> None:
    """Remove what an earlier ``raymlops score`` wrote (parts, records, temporaries), nothing else.

    Every part is checked first: one whose footer lacks the counts ``raymlops score`` writes is not
    ours (someone's data that happens to be named ``part-*.parquet``), and nothing is deleted.

    Raises:
        ConflictError: a part file was not written by ``raymlops score``.
    """
    for loc in (out, rej):
        parts = {i: info.path for i, info in loc.parts().items()}
        for index, md in _footers(loc.filesystem, parts).items():
            if isinstance(md, Exception) or _unit_result(md) is None:
                raise ConflictError(
                    f"{parts[index]} was not written by raymlops score; refusing to delete it "
                    "(choose an output folder of its own)"
                )
    for loc in (out, rej):
        for info in loc.parts().values():
            loc.filesystem.delete_file(info.path)
        loc.clear_tmp()
    for name in (SUCCESS_FILE, MANIFEST_FILE, JOB_FILE):
        remove_quietly(out.filesystem, out.file(name))


def _real_path(fs: pafs.FileSystem, path: str) -> str:
    if isinstance(fs, pafs.LocalFileSystem):
        return os.path.realpath(path)
    return path.rstrip("/")


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def overlapping(loc: OutputLocation, input_uri: str) -> bool:
    """Whether an output folder and the input share files: one is the other or lies inside it.

    Symbolic links are resolved on local disks; on object stores the bucket/key prefixes compare.
    """
    fs, path = resolve_filesystem(input_uri)
    if fs.type_name != loc.filesystem.type_name:
        return False
    a, b = _real_path(loc.filesystem, loc.path), _real_path(fs, path)
    return _within(a, b) or _within(b, a)
