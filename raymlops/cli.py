"""The ``raymlops`` command line, a thin layer over the library.

Every ``--json`` prints exactly one JSON object on stdout; logs and progress go to stderr. Errors
print one clear message and exit non-zero without a traceback (``RAYMLOPS_DEBUG=1`` shows it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from raymlops._console import err_console, json_stdout, print_json

app = typer.Typer(add_completion=False, no_args_is_help=True, help="MLOps pipelines on Ray.")
models_app = typer.Typer(no_args_is_help=True, help="The model registry.")
app.add_typer(models_app, name="models")

StoreOpt = Annotated[
    str | None, typer.Option("--store", help="Model store URI (default $RAYMLOPS_STORE or ./raymlops-store)")
]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Ray address (default $RAY_ADDRESS, else embedded local Ray)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout")]


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _user_errors() -> tuple[type[BaseException], ...]:
    from raymlops.bundle import InputError
    from raymlops.config import ConfigError
    from raymlops.data._errors import DataError
    from raymlops.registry import RegistryError

    return (ConfigError, DataError, RegistryError, InputError, FileNotFoundError, ValueError)


def _guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except typer.Exit:
        raise
    except _user_errors() as err:
        if os.environ.get("RAYMLOPS_DEBUG"):
            raise
        _fail(str(err))


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@app.command()
def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML file")],
    store: StoreOpt = None,
    address: AddressOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted search")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole pipeline: data checks, search, training, evaluation, gate, registration."""
    from raymlops.config import load_pipeline
    from raymlops.pipeline import run_pipeline

    _quiet_tensorflow()
    cfg = _guard(load_pipeline, pipeline)
    with json_stdout(as_json):
        summary = _guard(run_pipeline, cfg, store=store, address=address, resume=resume)
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
    promoted = summary["promoted"]
    err_console.print(f"promoted to: {promoted}" if promoted else "not promoted", highlight=False)
    err_console.print(f"store: {summary['store']}   wall time: {summary['seconds']:.1f} s", highlight=False)


@app.command()
def validate(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML file")],
    as_json: JsonOpt = False,
) -> None:
    """Check the pipeline file and its data without training or writing anything."""
    from raymlops.config import load_pipeline
    from raymlops.pipeline import validate_pipeline

    cfg = _guard(load_pipeline, pipeline)
    with json_stdout(as_json):
        report = _guard(validate_pipeline, cfg)
    if as_json:
        print_json(report)
    else:
        err_console.print(
            f"[green]ok[/]: {report['rows']} rows, {report['features']} features, task {report['task']}, "
            f"split {report['split']}",
            highlight=False,
        )


@app.command()
def schema(output: Annotated[Path | None, typer.Option("-o", "--output")] = None) -> None:
    """Print (or write) the JSON schema of the pipeline file."""
    from raymlops.config import pipeline_json_schema

    text = json.dumps(pipeline_json_schema(), indent=2)
    if output:
        output.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")


@models_app.command("list")
def models_list(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """List registered models with their versions and aliases."""
    from raymlops.registry import ModelStore

    st = _guard(ModelStore, store)
    rows = []
    for name in st.list_models():
        versions = st.list_versions(name)
        aliases = st.aliases(name)
        latest = versions[-1] if versions else None
        rows.append(
            {
                "name": name,
                "versions": [v.version for v in versions],
                "aliases": aliases,
                "latest_metrics": {
                    k: v for k, v in (latest.metrics if latest else {}).items() if isinstance(v, float)
                },
            }
        )
    if as_json:
        print_json({"store": st.uri, "models": rows})
        return
    table = Table(title=f"models in {st.uri}")
    for col in ("name", "versions", "aliases", "latest metrics"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            ", ".join(map(str, r["versions"])),
            ", ".join(f"{a}->{v}" for a, v in r["aliases"].items()),
            ", ".join(f"{k}={v:.4f}" for k, v in r["latest_metrics"].items()),
        )
    err_console.print(table)


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one version's metadata (metrics, params, lineage, files)."""
    from raymlops.registry import ModelStore

    st = _guard(ModelStore, store)
    version = _guard(st.get, ref)
    payload = {
        "name": version.name,
        "version": version.version,
        "uri": version.uri,
        "aliases": version.aliases,
        "metadata": version.metadata,
    }
    if as_json:
        print_json(payload)
        return
    md = version.metadata
    err_console.print(
        f"[bold]{version.name}:{version.version}[/]  aliases: {', '.join(version.aliases) or '-'}"
    )
    err_console.print(f"uri: {version.uri}", highlight=False)
    err_console.print(f"created: {md.get('created_at')}  kind: {md.get('kind')}  model: {md.get('model')}")
    for k, v in md.get("metrics", {}).items():
        if isinstance(v, float):
            err_console.print(f"  {k}: {v:.4f}")
    err_console.print(f"params: {json.dumps(md.get('params'))}", highlight=False)
    gate = md.get("gate", {})
    err_console.print(f"gate: {'passed' if gate.get('passed') else 'refused'}")
    for reason in gate.get("reasons", []):
        err_console.print(f"  - {reason}", highlight=False)
    err_console.print(f"data fingerprint: {md.get('data', {}).get('fingerprint')}", highlight=False)


@models_app.command("promote")
def models_promote(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    alias: Annotated[str, typer.Option("--alias", help="Alias to point at the version")] = "champion",
    store: StoreOpt = None,
) -> None:
    """Point an alias (champion by default) at a version; running servers pick it up."""
    from raymlops.registry import ModelStore, parse_ref

    st = _guard(ModelStore, store)
    parsed = _guard(parse_ref, ref)
    if parsed.version is None:
        _fail(f"promote needs NAME:VERSION, got {ref!r}")
    _guard(st.set_alias, parsed.name, alias, parsed.version)
    err_console.print(f"{parsed.name}@{alias} -> {parsed.version}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
