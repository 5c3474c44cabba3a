"""`raymlops monitor`: drift and data quality against the training reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from raymlops._console import command_session, err_console, json_stdout, print_json

from ._common import AddressOpt, JsonOpt, LegacyPickleOpt, StoreOpt, VerboseOpt, allow_legacy_pickle, guard


def monitor(
    ref: Annotated[str, typer.Argument(help="NAME (its champion), NAME:VERSION or NAME@ALIAS")],
    input_uri: Annotated[
        str, typer.Option("--input", help="CSV/Parquet file or folder: a batch or the serving request log")
    ],
    store: StoreOpt = None,
    address: AddressOpt = None,
    labels: Annotated[
        str | None, typer.Option("--labels", help="Labels that arrived later (CSV/Parquet), joined on --key")
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="Column linking labels to logged predictions")
    ] = None,
    label_column: Annotated[
        str | None, typer.Option("--label-column", help="Label column in --labels (default: the target)")
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="HTML report path (default raymlops-monitor/NAME-vV-TIME.html)"),
    ] = None,
    psi_drift: Annotated[float | None, typer.Option("--psi-drift", help="Override monitor.psi_drift")] = None,
    psi_warning: Annotated[
        float | None, typer.Option("--psi-warning", help="Override monitor.psi_warning")
    ] = None,
    pvalue: Annotated[float | None, typer.Option("--pvalue", help="Override monitor.ks_pvalue")] = None,
    fail_on_drift: Annotated[
        bool, typer.Option("--fail-on-drift", help="Exit 3 on drift, schema skew or degraded live metrics")
    ] = False,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
    legacy_pickle: LegacyPickleOpt = False,
) -> None:
    """Drift and data quality of new data against the model's training reference; live metrics with labels.

    With --fail-on-drift, exit code 3 on drift, schema skew or degraded live metrics (to trigger retraining).
    """
    from raymlops.monitor import DRIFT_EXIT_CODE
    from raymlops.monitor import monitor as run_monitor
    from raymlops.registry import resolve_store_uri

    allow_legacy_pickle(legacy_pickle)
    session = command_session("monitor", store=resolve_store_uri(store), verbose=verbose, view=False)
    with session, json_stdout(as_json):
        result = guard(
            run_monitor,
            ref,
            input_uri,
            store=store,
            address=address,
            labels=labels,
            key=key,
            label_column=label_column,
            report=report,
            psi_drift=psi_drift,
            psi_warning=psi_warning,
            pvalue=pvalue,
        )
    if as_json:
        print_json(result)
    else:
        _print_monitor(result)
    if fail_on_drift and not result["ok"]:
        raise typer.Exit(DRIFT_EXIT_CODE)


def _print_monitor(result: dict[str, Any]) -> None:
    table = Table(title=f"raymlops monitor: {result['model']}:{result['version']} on {result['rows']} rows")
    for col in ("feature", "type", "PSI", "KS p-value", "status"):
        table.add_column(col)
    style = {"drift": "[red]drift[/]", "warning": "[yellow]warning[/]", "ok": "ok"}
    for f in result["features"]:
        psi = f"{f['psi']:.4f}" if f["psi"] is not None else "-"
        pval = f"{f['ks_pvalue']:.3g}" if f.get("ks_pvalue") is not None else "-"
        table.add_row(f["feature"], f["type"], psi, pval, style.get(f["status"], f["status"]))
    err_console.print(table)
    pred = result.get("prediction")
    if pred:
        err_console.print(
            f"prediction drift ({pred['source']}): PSI {pred['psi']}, {pred['status']}", highlight=False
        )
    schema = result["schema"]
    if schema["skew"]:
        err_console.print(
            f"[red]schema skew[/]: missing {schema['missing_features']}, "
            f"non-numeric {schema['type_mismatch']}",
            highlight=False,
        )
    for item in result["data_quality"]["null_rate_increases"]:
        err_console.print(
            f"[yellow]null rate[/] {item['feature']}: {item['reference_null_rate']} -> {item['null_rate']}",
            highlight=False,
        )
    perf = result.get("performance")
    if perf:
        err_console.print(f"live performance: {perf.get('verdict')}", highlight=False)
    verdict = "[red]drift found[/]" if result["drift"] else "[green]no drift[/]"
    err_console.print(f"{verdict}   report: {result.get('report')}", highlight=False)
    if result.get("recommendation"):
        err_console.print(f"-> {result['recommendation']}", highlight=False)
