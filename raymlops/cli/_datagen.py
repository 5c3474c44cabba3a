"""`raymlops datagen`: synthetic data at any scale."""

from __future__ import annotations

from typing import Annotated

import typer

from raymlops._console import err_console, json_stdout, print_json

from ._common import AddressOpt, JsonOpt, guard


def datagen(
    rows: Annotated[int, typer.Option("--rows", help="Number of rows")],
    features: Annotated[int, typer.Option("--features", help="Number of feature columns")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder (any pyarrow URI) for the shards")],
    shards: Annotated[
        int | None, typer.Option("--shards", help="Number of files (default one per 1M rows)")
    ] = None,
    classes: Annotated[int, typer.Option("--classes", help="Number of classes of `label`")] = 2,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    bad_rows: Annotated[int, typer.Option("--bad-rows", help="Rows with a null first feature")] = 0,
    float32: Annotated[bool, typer.Option("--float32", help="Write features as float32")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace Parquet files in OUTPUT")] = False,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write synthetic classification data (id, f_00…, label) as Parquet shards, at any scale."""
    from raymlops.cluster import connect
    from raymlops.datagen import DatagenSpec, generate

    spec = guard(
        DatagenSpec,
        rows=rows,
        features=features,
        classes=classes,
        seed=seed,
        bad_rows=bad_rows,
        dtype="float32" if float32 else "float64",
    )
    with json_stdout(as_json):
        use_ray = (shards or 1) > 1 or rows > 1_000_000
        if use_ray:
            guard(connect, address)
        summary = guard(generate, spec, output, shards=shards, overwrite=overwrite, use_ray=use_ray)
    if as_json:
        print_json(summary)
        return
    err_console.print(
        f"wrote {summary['rows']:,} rows × {features} features in {summary['shards']} shard(s) "
        f"({summary['bytes'] / 1e6:,.1f} MB) to {summary['output']} in {summary['seconds']:.1f} s",
        highlight=False,
    )
