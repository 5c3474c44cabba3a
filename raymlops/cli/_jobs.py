"""`raymlops submit` and `raymlops jobs list|status|logs|stop`: pipelines as Ray jobs on a cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from raymlops._console import err_console, print_json

from ._common import JsonOpt, StoreOpt, guard

__all__ = ["jobs_app", "submit"]

jobs_app = typer.Typer(no_args_is_help=True, help="Ray jobs on a cluster (the Jobs API, token auth).")

JobsAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address", help="Jobs API http://HEAD:8265 (default $RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS)"
    ),
]
JobIdArg = Annotated[str, typer.Argument(help="Job (submission) id")]


def submit(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML file")],
    address: JobsAddressOpt = None,
    store: StoreOpt = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Return once submitted; print the job id")
    ] = False,
    pip: Annotated[list[str] | None, typer.Option("--pip", help="Extra pip requirement (repeatable)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the pipeline as a Ray job on a cluster; streams its logs and exits with its outcome."""
    from raymlops.submit import submit as submit_job

    result = guard(submit_job, pipeline, address, store=store, wait=not no_wait, extra_pip=pip)
    if as_json:
        print_json(result.to_dict())
    elif no_wait:
        sys.stdout.write(result.job_id + "\n")
    else:
        colour = "green" if result.exit_code == 0 else "red"
        err_console.print(f"job {result.job_id}: [{colour}]{result.status}[/]", highlight=False)
        if result.message and result.exit_code:
            err_console.print(result.message, highlight=False)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    raise typer.Exit(result.exit_code)


@jobs_app.command("list")
def jobs_list(address: JobsAddressOpt = None, as_json: JsonOpt = False) -> None:
    """Every job the cluster knows, newest first."""
    from raymlops.submit import list_jobs

    jobs = guard(list_jobs, address)
    if as_json:
        print_json({"jobs": jobs})
        return
    table = Table(title="Ray jobs")
    for col in ("job id", "status", "entrypoint", "message"):
        table.add_column(col)
    for job in jobs:
        table.add_row(
            str(job.get("job_id") or job.get("submission_id")),
            str(job.get("status")),
            str(job.get("entrypoint", ""))[:60],
            str(job.get("message") or "")[:60],
        )
    err_console.print(table)


@jobs_app.command("status")
def jobs_status(job_id: JobIdArg, address: JobsAddressOpt = None, as_json: JsonOpt = False) -> None:
    """One job's status and details."""
    from raymlops.submit import job_status

    details = guard(job_status, job_id, address)
    if as_json:
        print_json(details)
    else:
        err_console.print(
            f"{job_id}: {details.get('status')}  {details.get('message') or ''}", highlight=False
        )


@jobs_app.command("logs")
def jobs_logs(
    job_id: JobIdArg,
    address: JobsAddressOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends")] = False,
) -> None:
    """A job's log (stdout), optionally followed to the end."""
    from raymlops.submit import job_logs

    text = guard(job_logs, job_id, address, follow=follow)
    if not follow:
        sys.stdout.write(text)


@jobs_app.command("stop")
def jobs_stop(job_id: JobIdArg, address: JobsAddressOpt = None) -> None:
    """Ask the cluster to stop a job."""
    from raymlops.submit import stop_job

    stopped = guard(stop_job, job_id, address)
    err_console.print(f"{job_id}: {'stop requested' if stopped else 'already ended'}", highlight=False)
