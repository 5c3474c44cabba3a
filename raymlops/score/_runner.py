"""The scoring job: plan, run the units through a Ray Data actor pool, reconcile, publish.

One Ray Data pipeline drives the work: a dataset of unit descriptions flows through ``map_batches``
with a fixed pool of :class:`UnitScorer` actors (model loaded once per actor), one unit per call and
one call in flight per actor, so a slow unit never holds others hostage behind it. Each actor streams
its unit from the input filesystem in batches and writes its files itself, which keeps the data off
the object store (on a two-core machine copies through it cost more than the model) and lets every
unit be committed exactly once. The driver only counts finished units for the progress bar, then
reads every output footer back to prove that rows in = rows scored + rows rejected.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import ray

from raymlops import storage
from raymlops.cluster import ClusterInfo, connect
from raymlops.data.schema import TableSchema
from raymlops.errors import ConflictError, RaymlopsError, UserError
from raymlops.model import get_kind

from ._output import (
    JOB_FILE,
    LOCK_DIR,
    MANIFEST_FILE,
    OutputLocation,
    UnitResult,
    absolute_uri,
    clear_outputs,
    committed_units,
    overlapping,
    read_job,
    reconcile,
    write_job,
    write_manifest,
)
from ._plan import JobPlan, ScoreUnit, plan_job
from ._worker import WorkerConfig

__all__ = ["DEFAULT_BATCH_ROWS", "DEFAULT_UNIT_ROWS", "ScoreError", "ScoreFailed", "pool_size", "score"]

log = logging.getLogger("raymlops")

DEFAULT_BATCH_ROWS = 65_536
DEFAULT_UNIT_ROWS = 500_000
#: Fewer rows than this per actor and the actor's start-up costs more than it saves.
MIN_ROWS_PER_ACTOR = 100_000
UNIT_DELAY_ENV = "RAYMLOPS_SCORE_UNIT_DELAY_S"
#: Lease of the output's writer lock: a killed writer keeps others out for at most this long.
LOCK_LEASE_S = 10.0


class ScoreError(UserError):
    """The job was refused before it started (existing output, a resume that does not match, ...)."""


class ScoreFailed(RaymlopsError):
    """The job ran but did not finish: a unit failed, or the counts on disk do not reconcile."""


@dataclass(frozen=True)
class PoolSize:
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float


def _local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pool_size(
    cluster: ClusterInfo, kind: str, n_units: int, workers: int | None = None, rows: int | None = None
) -> PoolSize:
    """How many scoring actors, and what each reserves.

    Kinds that score on a GPU (Keras) take one GPU per actor when the cluster has GPUs. Otherwise
    one actor per core (an embedded Ray advertises twice the cores as logical CPUs, but the model
    only runs as fast as the cores), never more than there are units, and, unless ``workers`` says
    otherwise, one per
    :data:`MIN_ROWS_PER_ACTOR` rows: starting an actor costs seconds (imports, model load), more than
    scoring a small input. Each actor reserves at most ``cpus / (actors + 1)`` CPUs so Ray Data
    always keeps a CPU for its own tasks: 2 actors × 1 CPU on a 2-CPU cluster deadlocks, fractional
    reservations do not.
    """
    n_units = max(1, n_units)
    if rows is not None and not workers:
        n_units = min(n_units, max(1, math.ceil(rows / MIN_ROWS_PER_ACTOR)))
    if get_kind(kind).gpu_scoring and cluster.gpus >= 1:
        actors = min(workers or int(cluster.gpus), int(cluster.gpus), n_units)
        return PoolSize(actors, min(1.0, cluster.cpus / (actors + 1)), 1.0)
    if workers:
        actors = workers
    elif cluster.embedded:
        actors = _local_cores()
    else:
        actors = max(1, int(cluster.cpus) - 1)
    actors = max(1, min(actors, n_units))
    cpus = min(1.0, cluster.cpus / (actors + 1)) if cluster.cpus else 1.0
    return PoolSize(actors, round(cpus, 3), 0.0)


def _load_schema(
    ref: str, store: str | None, allow_legacy_pickle: bool
) -> tuple[str, str, str, TableSchema, list[str]]:
    """Resolve the reference to one exact version and read its schema (verified, without loading the model).

    The driver never loads the estimator: Keras in the driver would hold GPU memory the actors need.
    A version in the old pickled format is refused here, before any actor starts, unless allowed.
    """
    from raymlops.model import check_pickle_free, output_columns
    from raymlops.registry import ModelStore

    st = ModelStore(store)
    version, folder = st.fetch(ref)
    check_pickle_free(folder, allow_legacy_pickle=allow_legacy_pickle or None, name=version.ref)
    schema = TableSchema.from_dict(json.loads((folder / "schema.json").read_text()))
    kind = str(version.metadata.get("kind", "random_forest"))
    outputs = output_columns(schema)
    return f"{version.name}:{version.version}", st.uri, kind, schema, outputs


@contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Ray Data's own progress bars and banners off for this job (ours is on stderr), restored after."""
    ctx = ray.data.DataContext.get_current()
    saved = (
        ctx.enable_progress_bars,
        ctx.print_on_execution_start,
        ctx.execution_options.preserve_order,
        ctx.enable_auto_log_stats,
    )
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = False
    ctx.enable_auto_log_stats = False
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    data_log.setLevel(max(level, logging.ERROR))  # "progress bars disabled", "execution finished"
    try:
        yield
    finally:
        data_log.setLevel(level)
        (
            ctx.enable_progress_bars,
            ctx.print_on_execution_start,
            ctx.execution_options.preserve_order,
            ctx.enable_auto_log_stats,
        ) = saved


@contextmanager
def _progress(enabled: bool, total_rows: int | None, units: int) -> Iterator[Callable[[int], None]]:
    """A bar on stderr advanced by each finished unit (rows when the input announces them, else units)."""
    if not enabled:
        yield lambda rows: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from raymlops._console import err_console

    columns = [
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows" if total_rows is not None else "units"),
        TimeRemainingColumn(),
    ]
    # A few refreshes a second: on two cores the bar must not compete with the actors for CPU.
    with Progress(*columns, console=err_console, transient=False, refresh_per_second=2) as bar:
        task = bar.add_task("score", total=total_rows if total_rows is not None else units)
        if total_rows is not None:
            yield lambda rows: bar.advance(task, rows)
        else:
            yield lambda rows: bar.advance(task, 1)


def _prepare_output(
    plan: JobPlan, out: OutputLocation, rej: OutputLocation, resume: bool, overwrite: bool
) -> bool:
    """Make the output folder ready for this job; True when an earlier attempt is being resumed."""
    existing = read_job(out)
    if existing is not None:
        if resume:
            try:
                earlier = JobPlan.from_dict(existing)
            except (KeyError, TypeError, ValueError) as err:
                raise ScoreError(
                    f"{out.uri}/{JOB_FILE} cannot be read ({err}); rerun with --overwrite"
                ) from None
            diffs = plan.differences(earlier)
            if diffs:
                raise ScoreError(
                    f"cannot resume into {out.uri}: the earlier job differs in {', '.join(diffs)}; "
                    "rerun with the same arguments, or start over with --overwrite"
                )
            plan.job_id = earlier.job_id  # the resumed job is the same job: its parts carry this id
            return True
        if not overwrite:
            raise ScoreError(
                f"{out.uri} already holds a scoring job's output; pass --resume to finish or check it, "
                "or --overwrite to replace it"
            )
        clear_outputs(out, rej)
    elif out.exists():
        foreign = [e.base_name for e in out.entries() if not e.base_name.startswith((".", "_"))]
        if foreign:
            raise ScoreError(
                f"output {out.uri} is not empty and was not written by raymlops score "
                f"({', '.join(sorted(foreign)[:5])}); choose a new or empty folder"
            )
    if rej.uri != out.uri and rej.exists() and rej.parts():
        if not overwrite:
            raise ScoreError(
                f"rejected-rows folder {rej.uri} already holds part files; choose another or --overwrite"
            )
        clear_outputs(rej, rej)
    write_job(out, plan)
    return False


def _refuse_overlap(input_uri: str, out: OutputLocation, rej: OutputLocation) -> None:
    """Outputs must not share files with the input: ``--overwrite`` there would delete input shards."""
    for loc, option in ((out, "--output"), (rej, "--rejected")):
        if overlapping(loc, input_uri):
            raise ScoreError(
                f"{option} {loc.uri} overlaps the input {input_uri} (one lies inside the other); "
                "scored and rejected rows must go to a folder of their own"
            )


@contextmanager
def _writer_locks(
    out: OutputLocation, rej: OutputLocation, model: str, resume: bool
) -> Iterator[list[storage.LeaseLock]]:
    """Hold the output's (and a separate rejected folder's) lease lock for the whole job.

    A second ``score`` into the same output is refused at once instead of mixing its parts with
    ours or deleting them with ``--overwrite``. A writer that dies (even ``kill -9``) leaves a
    lease that expires after :data:`LOCK_LEASE_S`; ``--resume`` waits that long for it, so a
    resume right after a kill takes over instead of being refused.
    """
    folders = [out] if rej.path.startswith(out.path.rstrip("/") + "/") else [out, rej]
    owner = f"raymlops score of {model} ({socket.gethostname()}, pid {os.getpid()})"
    locks: list[storage.LeaseLock] = []
    try:
        for loc in folders:
            lock = storage.LeaseLock(
                loc.filesystem,
                loc.file(LOCK_DIR),
                LOCK_LEASE_S,
                timeout_s=1.5 * LOCK_LEASE_S if resume else 0,
                owner=owner,
            )
            try:
                lock.acquire()
            except ConflictError as err:
                raise ScoreError(f"another raymlops score is writing into {loc.uri}: {err}") from None
            locks.append(lock)
        yield locks
    finally:
        for lock in reversed(locks):
            lock.release()


def score(
    ref: str,
    input_uri: str,
    output_uri: str,
    *,
    store: str | None = None,
    rejected_uri: str | None = None,
    keep: list[str] | None = None,
    unknown_category: str = "ignore",
    resume: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    unit_rows: int = DEFAULT_UNIT_ROWS,
    address: str | None = None,
    progress: bool = True,
    allow_legacy_pickle: bool = False,
) -> dict[str, Any]:
    """Score ``input_uri`` with a registered model and write Parquet shards to ``output_uri``.

    Args:
        ref: ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``; resolved once to one exact version.
        input_uri: a CSV or Parquet file, or a folder of them, on any pyarrow filesystem.
        output_uri: folder for the scored shards (``part-NNNNN.parquet``) and the job records.
        store: the model store URI.
        rejected_uri: folder for rows that fail the model's schema (default ``<output>/_rejected``).
        keep: input columns to carry into the output next to the predictions (default: all).
        unknown_category: ``ignore`` (score with the category's one-hot all zero) or ``reject``.
        resume: finish an interrupted job (units already committed are kept, never redone).
        overwrite: replace an earlier job's output in ``output_uri``.
        workers: scoring actors (default: one per core locally, per GPU for Keras on GPUs).
        batch_rows: rows per batch inside an actor; bounds memory.
        unit_rows: target rows per unit of work for Parquet input (whole row groups).
        address: Ray address (default ``$RAY_ADDRESS`` or an embedded local Ray).
        progress: draw a progress bar on stderr.
        allow_legacy_pickle: load a version written with pickled model files by an older raymlops
            (they can run code when loaded: only for stores you trust).

    Returns:
        The summary: rows_in, rows_scored, rows_rejected, seconds, rows_per_s, output, rejected, ...

    Raises:
        InputError: the input cannot be scored at all (a feature missing from every file, ...).
        ScoreError: the job was refused (output exists, resume does not match, the output or
            rejected folder overlaps the input, another ``score`` is writing into the output).
        ScoreFailed: a unit failed or the counts on disk do not reconcile; nothing is marked done.
    """
    started = time.perf_counter()
    if batch_rows < 1 or unit_rows < 1:
        raise ScoreError("batch_rows and unit_rows must be positive")
    model, store_uri, kind, schema, outputs = _load_schema(ref, store, allow_legacy_pickle)
    input_uri = absolute_uri(input_uri)
    out = OutputLocation.of(output_uri)
    rej = OutputLocation.of(rejected_uri or f"{out.uri.rstrip('/')}/_rejected")
    _refuse_overlap(input_uri, out, rej)
    plan, layout = plan_job(
        model=model,
        input_uri=input_uri,
        schema=schema,
        output_columns=outputs,
        keep=keep,
        unknown_category=unknown_category,
        rejected=rej.uri,
        unit_rows=unit_rows,
    )
    with _writer_locks(out, rej, model, resume) as locks:
        resumed = _prepare_output(plan, out, rej, resume, overwrite)
        done, foreign = committed_units(out, plan) if resumed else ({}, [])
        if foreign:
            raise ScoreError(
                f"cannot resume into {out.uri}: it holds parts of another job or model version ("
                + "; ".join(foreign[:3])
                + (f"; and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                + "); start over with --overwrite or choose another output"
            )
        pending = [u for u in plan.units if u.index not in done]
        for loc in (out, rej):
            loc.clear_tmp()  # files of attempts that died; their units are not committed and run again
        scored_now: list[UnitResult] = []
        size = PoolSize(0, 0.0, 0.0)
        if pending:  # Ray only starts once the job is known to be valid and to have work left
            cluster = connect(address)
            pending_rows = None if plan.known_rows is None else sum(u.rows or 0 for u in pending)
            size = pool_size(cluster, kind, len(pending), workers, pending_rows)
            cfg = WorkerConfig(
                model=model,
                store=store_uri,
                kind=kind,
                keep=plan.keep,
                unknown_category=unknown_category,
                layout=layout,
                out=out,
                rejected=rej,
                batch_rows=batch_rows,
                threads=max(1, math.ceil(size.cpus_per_actor)),
                unit_delay_s=float(os.environ.get(UNIT_DELAY_ENV, "0") or 0),
                job_id=plan.job_id,
                allow_legacy_pickle=allow_legacy_pickle,
            )
            scored_now = _run_units(cfg, pending, size, progress, pending_rows)
        rec = reconcile(plan, out, rej)
        if not rec.ok:
            raise ScoreFailed(
                "scoring did not reconcile, so the job is not marked done: "
                + "; ".join(rec.problems[:10])
                + (f" (and {len(rec.problems) - 10} more)" if len(rec.problems) > 10 else "")
            )
        for loc in (out, rej):
            loc.clear_tmp()
        lost = [lock.path for lock in locks if lock.lost]
        if lost:
            raise ScoreFailed(
                f"the writer's lock {lost[0]} expired while scoring (the process was paused for longer "
                "than its lease), so another writer may have started: the job is not marked done; "
                "rerun with --resume"
            )
        seconds = time.perf_counter() - started
        rows_now = sum(r.rows_in for r in scored_now)
        summary: dict[str, Any] = {
            "model": model,
            "input": input_uri,
            "output": out.uri,
            "rejected": rej.uri,
            "rows_in": rec.rows_in,
            "rows_scored": rec.rows_scored,
            "rows_rejected": rec.rows_rejected,
            "seconds": round(seconds, 3),
            "rows_per_s": round(rows_now / seconds, 1) if seconds > 0 else None,
            "rows_this_run": rows_now,
            "units": len(plan.units),
            "units_resumed": len(done),
            "scored_files": rec.scored_files,
            "rejected_files": rec.rejected_files,
            "workers": size.actors,
            "cpus_per_worker": size.cpus_per_actor,
            "gpus_per_worker": size.gpus_per_actor,
            "resumed": resumed,
            "reconciled": True,
        }
        write_manifest(out, {**summary, "job": f"{out.uri.rstrip('/')}/{JOB_FILE}", **rec.to_dict()})
        summary["manifest"] = f"{out.uri.rstrip('/')}/{MANIFEST_FILE}"
        return summary


def _run_units(
    cfg: WorkerConfig, units: list[ScoreUnit], size: PoolSize, progress: bool, total_rows: int | None
) -> list[UnitResult]:
    """Push the units through the actor pool and collect their counts (the driver sees no rows)."""
    from ._worker import UnitScorer

    results: list[UnitResult] = []
    failures: list[str] = []
    paths = {u.index: u.path for u in units}
    with _quiet_ray_data():
        items = ray.data.from_items(
            [{"unit": json.dumps(u.to_dict())} for u in units], override_num_blocks=len(units)
        )
        ds = items.map_batches(
            UnitScorer,
            fn_constructor_kwargs={"cfg": cfg},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size.actors, max_tasks_in_flight_per_actor=1),
            num_cpus=size.cpus_per_actor,
            num_gpus=size.gpus_per_actor or None,
        )
        try:
            with _progress(progress, total_rows, len(units)) as advance:
                for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
                    assert isinstance(batch, pd.DataFrame)
                    for row in batch.to_dict("records"):
                        if row["error"]:
                            failures.append(
                                f"unit {row['index']} ({paths.get(int(row['index']))}): {row['error']}"
                            )
                            continue
                        result = UnitResult(
                            int(row["index"]),
                            int(row["rows_in"]),
                            int(row["scored"]),
                            int(row["rejected"]),
                            float(row["seconds"]),
                        )
                        results.append(result)
                        advance(result.rows_in)
        except ray.exceptions.RayError as err:
            raise ScoreFailed(
                f"scoring failed; finished units are kept, rerun with --resume: {_root_cause(err)}"
            ) from err
    if failures:
        more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
        raise ScoreFailed(
            f"{len(failures)} of {len(units)} unit(s) failed; the {len(results)} finished are kept, "
            f"fix the cause and rerun with --resume: " + "; ".join(failures[:3]) + more
        )
    return results


def _root_cause(err: BaseException) -> str:
    """The most telling line of a Ray error (its text holds the remote traceback)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for line in reversed(lines):
        if ":" in line and not line.startswith(("To change", "ray.", "File ", "Failed to apply")):
            head = line.split(":", 1)[0]
            if head.endswith(("Error", "Exception")) and not head.startswith("ray"):
                return line
    return lines[0] if lines else type(err).__name__
