"""The ``raymlops`` command line, a thin layer over the library, one module per command group.

Every ``--json`` prints exactly one JSON object on stdout; logs and progress go to stderr. User
errors (:class:`raymlops.errors.UserError`) print one clear message and exit 2; anything else is a
bug and shows its traceback. Modules import what their command needs when it runs, so
``raymlops --help`` and ``raymlops validate`` start fast.
"""

from __future__ import annotations

import typer

from . import _datagen, _jobs, _keys, _models, _monitor, _run, _score, _serve

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="MLOps pipelines on Ray.")
app.command()(_run.run)
app.command()(_run.validate)
app.command()(_run.schema)
app.add_typer(_models.models_app, name="models")
app.command()(_score.score)
app.command()(_datagen.datagen)
app.command()(_monitor.monitor)
app.command(
    "serve",
    context_settings={"allow_interspersed_args": True},
    epilog="raymlops serve config REF... -o serve.yaml writes a Serve config (serve deploy / RayService).",
)(_serve.serve_cmd)
app.command()(_jobs.submit)
app.add_typer(_jobs.jobs_app, name="jobs")
app.add_typer(_keys.keys_app, name="keys")


_INTERRUPTED = (130, 143)  # Ctrl-C, SIGTERM


def main() -> None:
    """The console script.

    After Ctrl-C or SIGTERM the command's session has already stopped Ray and ended what was left
    of it; the interpreter's own teardown (atexit hooks, the joins of threads Ray and Serve
    started) can then take seconds more on a busy machine, so exit at once: a stopped
    `raymlops serve` must be gone within 10 s.
    """
    import os
    import sys

    try:
        app()
    except SystemExit as done:
        if done.code in _INTERRUPTED:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(done.code))  # type: ignore[arg-type]
        raise
