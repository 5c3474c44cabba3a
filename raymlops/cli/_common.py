"""What every command shares: options, error handling, output rules.

Only :class:`~raymlops.errors.UserError` is turned into a one-line message and a non-zero exit;
anything else is a bug and shows its traceback. ``RAYMLOPS_DEBUG=1`` shows the traceback of user
errors too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from raymlops._console import err_console

__all__ = [
    "AddressOpt",
    "JsonOpt",
    "LegacyPickleOpt",
    "StoreOpt",
    "VerboseOpt",
    "allow_legacy_pickle",
    "fail",
    "guard",
    "quiet_tensorflow",
]

T = TypeVar("T")

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store", help="Model store URI (default $RAYMLOPS_STORE, the file's store:, ./raymlops-store)"
    ),
]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Ray address (default $RAY_ADDRESS, else embedded local Ray)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout")]
LegacyPickleOpt = Annotated[
    bool,
    typer.Option(
        "--allow-legacy-pickle",
        help="Also read versions written before model files became pickle-free (runs their pickles: "
        "trusted stores only)",
    ),
]


def allow_legacy_pickle(enabled: bool) -> None:
    """Opt in to unpickling old versions for this process and the Ray workers it starts, loudly.

    The loaders read ``$RAYMLOPS_ALLOW_LEGACY_PICKLE``; setting it before Ray starts reaches the
    scoring workers too.
    """
    if not enabled:
        return
    from raymlops.model import LEGACY_PICKLE_ENV

    os.environ[LEGACY_PICKLE_ENV] = "1"
    err_console.print(
        "[yellow]warning:[/] --allow-legacy-pickle: versions written by an older raymlops are unpickled, "
        "which runs any code they hold. Use it only with a store you trust, then retrain them.",
        highlight=False,
        soft_wrap=True,
    )


VerboseOpt = Annotated[
    bool,
    typer.Option(
        "-v", "--verbose", help="Stream Ray's, Tune's and TensorFlow's logs (default: to the log file)"
    ),
]


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guard(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn``; a user error becomes a message and exit code 2, anything else propagates."""
    from raymlops.errors import UserError

    try:
        return fn(*args, **kwargs)
    except UserError as err:
        if os.environ.get("RAYMLOPS_DEBUG"):
            raise
        fail(str(err))
        raise AssertionError("unreachable") from err


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
