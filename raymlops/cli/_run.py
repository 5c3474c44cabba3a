"""`raymlops run`, `validate` and `schema`: the pipeline file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from raymlops._console import command_session, err_console, json_stdout, print_json

from ._common import AddressOpt, JsonOpt, LegacyPickleOpt, StoreOpt, VerboseOpt, allow_legacy_pickle, guard


def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML file")],
    store: StoreOpt = None,
    address: AddressOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted search")] = False,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
    legacy_pickle: LegacyPickleOpt = False,
) -> None:
    """Run the whole pipeline: data checks, search, training, evaluation, gate, registration."""
    from raymlops.config import load_pipeline
    from raymlops.pipeline import run_pipeline
    from raymlops.registry import resolve_store_uri

    allow_legacy_pickle(legacy_pickle)  # the champion's re-scoring may read an old version
    cfg = guard(load_pipeline, pipeline)
    store_uri = resolve_store_uri(store, cfg.store)
    with command_session(
        "run", store=store_uri, verbose=verbose, title=f"raymlops run {cfg.name}"
    ) as session:
        session.interrupt_hint = f"raymlops run {pipeline} --resume continues the interrupted search"
        with json_stdout(as_json):
            summary = guard(
                run_pipeline, cfg, store=store, address=address, resume=resume, pipeline_file=str(pipeline)
            )
    if as_json:
        print_json(summary)
    else:
        _print_run_summary(summary)


def _print_run_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"raymlops run: {summary['pipeline']}")
    for col in ("model", "kind", "workers", "best params", "held-out metrics"):
        table.add_column(col)
    for m in summary["models"]:
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in m["metrics"].items() if isinstance(v, float))
        marker = " *" if m["name"] == summary["selected"] else ""
        table.add_row(m["name"] + marker, m["kind"], str(m["workers"]), json.dumps(m["best_params"]), metrics)
    err_console.print(table)
    gate = summary["gate"]
    verdict = "[green]passed[/]" if gate["passed"] else "[red]refused[/]"
    err_console.print(f"version: {summary['pipeline']}:{summary['version']}   gate: {verdict}")
    for reason in gate["reasons"]:
        err_console.print(f"  - {reason}", highlight=False)
    for warning in summary.get("data", {}).get("warnings", []):
        err_console.print(f"[yellow]data warning:[/] {warning}", highlight=False)
    promoted = summary["promoted"]
    err_console.print(f"promoted to: {promoted}" if promoted else "not promoted", highlight=False)
    err_console.print(f"store: {summary['store']}   wall time: {summary['seconds']:.1f} s", highlight=False)


def validate(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML file")],
    as_json: JsonOpt = False,
) -> None:
    """Check the pipeline file and its data without training or writing anything."""
    from raymlops.config import load_pipeline
    from raymlops.pipeline import validate_pipeline

    cfg = guard(load_pipeline, pipeline)
    with json_stdout(as_json):
        report = guard(validate_pipeline, cfg)
    if as_json:
        print_json(report)
    else:
        err_console.print(
            f"[green]ok[/]: {report['rows']} rows, {report['features']} features, task {report['task']}, "
            f"split {report['split']}",
            highlight=False,
        )
        for warning in report.get("warnings", []):
            err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)


def schema(output: Annotated[Path | None, typer.Option("-o", "--output")] = None) -> None:
    """Print (or write) the JSON schema of the pipeline file."""
    from raymlops.config import pipeline_json_schema

    text = json.dumps(pipeline_json_schema(), indent=2)
    if output:
        output.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
