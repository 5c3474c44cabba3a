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
    from raymlops.submit import SubmitError

    return (ConfigError, DataError, RegistryError, InputError, SubmitError, FileNotFoundError, ValueError)


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
    # --store, then $RAYMLOPS_STORE, then the file's `store:`, then ./raymlops-store.
    store = store or os.environ.get("RAYMLOPS_STORE") or None
    with json_stdout(as_json):
        summary = _guard(
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


@app.command()
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
    as_json: JsonOpt = False,
) -> None:
    """Score a large CSV/Parquet input with Ray Data; bad rows go to quarantine with a reason."""
    from raymlops.score import ScoreFailed
    from raymlops.score import score as run_score

    _quiet_tensorflow()
    columns = None if keep is None else [c.strip() for c in keep.split(",") if c.strip()]
    with json_stdout(as_json):
        try:
            summary = _guard(
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
            )
        except ScoreFailed as err:
            if os.environ.get("RAYMLOPS_DEBUG"):
                raise
            _fail(str(err), code=1)
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


@app.command()
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

    spec = _guard(
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
            _guard(connect, address)
        summary = _guard(generate, spec, output, shards=shards, overwrite=overwrite, use_ray=use_ray)
    if as_json:
        print_json(summary)
        return
    err_console.print(
        f"wrote {summary['rows']:,} rows × {features} features in {summary['shards']} shard(s) "
        f"({summary['bytes'] / 1e6:,.1f} MB) to {summary['output']} in {summary['seconds']:.1f} s",
        highlight=False,
    )


@app.command()
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
    as_json: JsonOpt = False,
) -> None:
    """Drift and data quality of new data against the model's training reference; live metrics with labels.

    With --fail-on-drift, exit code 3 on drift, schema skew or degraded live metrics (to trigger retraining).
    """
    from raymlops.monitor import DRIFT_EXIT_CODE
    from raymlops.monitor import monitor as run_monitor

    with json_stdout(as_json):
        result = _guard(
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


@app.command(
    "serve",
    context_settings={"allow_interspersed_args": True},
    epilog="raymlops serve config REF... -o serve.yaml writes a Serve config (serve deploy / RayService).",
)
def serve_cmd(
    refs: Annotated[
        list[str],
        typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS; or: config REF...", metavar="REF..."),
    ],
    host: Annotated[
        str | None, typer.Option("--host", help="Bind address (default 127.0.0.1; `serve config`: 0.0.0.0)")
    ] = None,
    port: Annotated[int, typer.Option("--port", help="HTTP port")] = 8000,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="`serve config`: the file to write")
    ] = None,
    store: StoreOpt = None,
    address: AddressOpt = None,
    pipeline: Annotated[
        Path | None, typer.Option("--pipeline", help="Take options from this pipeline file's serve: section")
    ] = None,
    canary: Annotated[
        list[str] | None,
        typer.Option("--canary", help="NAME:VERSION=PERCENT of unversioned traffic (repeatable)"),
    ] = None,
    min_replicas: Annotated[int | None, typer.Option("--min-replicas")] = None,
    max_replicas: Annotated[int | None, typer.Option("--max-replicas")] = None,
    target_ongoing_requests: Annotated[float | None, typer.Option("--target-ongoing-requests")] = None,
    max_ongoing_requests: Annotated[int | None, typer.Option("--max-ongoing-requests")] = None,
    max_batch_size: Annotated[int | None, typer.Option("--max-batch-size")] = None,
    batch_wait_timeout_s: Annotated[float | None, typer.Option("--batch-wait-timeout-s")] = None,
    num_cpus: Annotated[float | None, typer.Option("--num-cpus", help="CPUs per replica")] = None,
    request_log_sample_rate: Annotated[float | None, typer.Option("--request-log-sample-rate")] = None,
    request_log: Annotated[
        str | None,
        typer.Option("--request-log", help="Where sampled requests go (default <store>/request_logs)"),
    ] = None,
) -> None:
    """Serve models over HTTP (TF Serving REST and Open Inference Protocol v2) until Ctrl-C.

    Options: --pipeline's serve: section, else the one recorded with the first model, plus any flag
    given. A promotion (`raymlops models promote`) reaches the running server without downtime.
    """
    from raymlops.config import load_pipeline
    from raymlops.registry import ModelStore
    from raymlops.serve._app import parse_canary, resolve_serve_options

    config_mode = bool(refs) and refs[0] == "config"
    models = refs[1:] if config_mode else refs
    if not models:
        _fail("give at least one model: raymlops serve REF... (or raymlops serve config REF... -o FILE)")
    if config_mode and output is None:
        _fail("serve config needs -o FILE")
    if not config_mode and output is not None:
        _fail("-o is for `raymlops serve config REF... -o FILE`")
    st = _guard(ModelStore, store)
    for ref in models:
        _guard(st.get, ref)
    for text in canary or []:
        name, spec = _guard(parse_canary, text)
        _guard(st.get, f"{name}:{spec.version}")
    base = _guard(load_pipeline, pipeline).serve if pipeline else None
    overrides = {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": target_ongoing_requests,
        "max_ongoing_requests": max_ongoing_requests,
        "max_batch_size": max_batch_size,
        "batch_wait_timeout_s": batch_wait_timeout_s,
        "num_cpus": num_cpus,
        "request_log_sample_rate": request_log_sample_rate,
    }
    options = _guard(resolve_serve_options, models, st.uri, base, overrides)
    if config_mode:
        from raymlops.serve import write_serve_config

        assert output is not None
        kwargs = {"store": st.uri, "options": options, "canary": canary, "request_log": request_log}
        _guard(write_serve_config, output, models, host=host or "0.0.0.0", port=port, **kwargs)
        err_console.print(f"wrote {output}: serve deploy {output}  (or spec.serveConfigV2 of a RayService)")
        return
    _serve_until_interrupted(models, st.uri, host or "127.0.0.1", port, options, canary, request_log, address)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _serve_until_interrupted(
    models: list[str],
    store: str,
    host: str,
    port: int,
    options: Any,
    canary: list[str] | None,
    request_log: str | None,
    address: str | None,
) -> None:
    import signal
    import time

    from raymlops.serve import API_KEY_ENV, start_server

    _quiet_tensorflow()
    embedded = not (address or os.environ.get("RAY_ADDRESS"))
    handle = None
    signal.signal(signal.SIGTERM, _interrupt)  # a container stop shuts Serve down like Ctrl-C
    try:
        handle = _guard(
            start_server,
            models,
            store=store,
            host=host,
            port=port,
            options=options,
            canary=canary,
            request_log=request_log,
            address=address,
        )
        auth = "bearer key required" if os.environ.get(API_KEY_ENV) else f"open ({API_KEY_ENV} unset)"
        err_console.print(f"serving {', '.join(models)} at {handle.url}   auth: {auth}", highlight=False)
        err_console.print(
            "  TF Serving: POST /v1/models/NAME:predict   OIP v2: POST /v2/models/NAME/infer   "
            f"replicas {options.min_replicas}-{options.max_replicas}, batch {options.max_batch_size}   "
            "Ctrl-C stops",
            highlight=False,
        )
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        err_console.print("stopping")
    finally:
        if handle is not None:
            handle.stop(shutdown=embedded)
        elif embedded:
            import ray

            if ray.is_initialized():
                from ray import serve

                serve.shutdown()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
