"""`raymlops score`: batch scoring with Ray Data."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from raymlops._console import command_session, err_console, json_stdout, print_json

from ._common import AddressOpt, JsonOpt, StoreOpt, VerboseOpt, fail, guard


def score(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS")],
    input_uri: Annotated[
        str, typer.Option("--input", "-i", help="CSV or Parquet file or folder (any pyarrow URI)")
    ],
    output_uri: Annotated[str, typer.Option("--output", "-o", help="Folder for the scored Parquet shards")],
    store: StoreOpt = None,
    address: AddressOpt = None,
    keep: Annotated[
        str | None, typer.Option("--keep", help="Comma-separated input columns to pass through (default all)")
    ] = None,
    rejected: Annotated[
        str | None, typer.Option("--rejected", help="Folder for rejected rows (default <output>/_rejected)")
    ] = None,
    unknown_category: Annotated[
        str,
        typer.Option("--unknown-category", help="ignore: score unseen categories; reject: quarantine them"),
    ] = "ignore",
    resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted job in OUTPUT")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier job's output")] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Scoring actors (default: per core/GPU)")
    ] = None,
    batch_rows: Annotated[int, typer.Option("--batch-rows", help="Rows per batch inside an actor")] = 65_536,
    unit_rows: Annotated[int, typer.Option("--unit-rows", help="Rows per unit of work (Parquet)")] = 500_000,
    allow_legacy_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-legacy-pickle",
            help="Load a version an older raymlops wrote with pickled files (runs code: trusted stores only)",
        ),
    ] = False,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Score a large CSV/Parquet input with Ray Data; bad rows go to quarantine with a reason."""
    from raymlops.registry import resolve_store_uri
    from raymlops.score import ScoreFailed
    from raymlops.score import score as run_score

    columns = None if keep is None else [c.strip() for c in keep.split(",") if c.strip()]
    with (
        command_session("score", store=resolve_store_uri(store), verbose=verbose, view=False),
        json_stdout(as_json),
    ):
        try:
            summary = guard(
                run_score,
                ref,
                input_uri,
                output_uri,
                store=store,
                rejected_uri=rejected,
                keep=columns,
                unknown_category=unknown_category,
                resume=resume,
                overwrite=overwrite,
                workers=workers,
                batch_rows=batch_rows,
                unit_rows=unit_rows,
                address=address,
                progress=True,
                allow_legacy_pickle=allow_legacy_pickle,
            )
        except ScoreFailed as err:
            if os.environ.get("RAYMLOPS_DEBUG"):
                raise
            fail(str(err), code=1)
    if as_json:
        print_json(summary)
        return
    if summary["rows_this_run"] == 0 and summary["units_resumed"]:
        err_console.print(
            f"[green]already complete[/]: {summary['rows_scored']:,} of {summary['rows_in']:,} rows scored "
            f"({summary['rows_rejected']:,} rejected); the files on disk were checked again",
            highlight=False,
        )
    else:
        err_console.print(
            f"[green]scored[/] {summary['rows_scored']:,} of {summary['rows_in']:,} rows "
            f"({summary['rows_rejected']:,} rejected) in {summary['seconds']:.1f} s, "
            f"{summary['rows_per_s'] or 0:,.0f} rows/s with {summary['workers']} worker(s)",
            highlight=False,
        )
    err_console.print(f"output: {summary['output']}", highlight=False)
    if summary["rows_rejected"]:
        err_console.print(f"rejected rows (with _reason): {summary['rejected']}", highlight=False)
    if summary["units_resumed"]:
        err_console.print(
            f"resumed: {summary['units_resumed']} of {summary['units']} units were already done"
        )
