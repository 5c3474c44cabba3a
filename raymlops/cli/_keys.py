"""`raymlops keys generate`: a signing key pair for model versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raymlops._console import err_console, print_json

from ._common import JsonOpt, guard

__all__ = ["keys_app"]

keys_app = typer.Typer(no_args_is_help=True, help="Signing keys for model versions (Ed25519).")


@keys_app.command("generate")
def keys_generate(
    out: Annotated[Path, typer.Option("--out", help="Folder for the private and public key (PEM)")],
    as_json: JsonOpt = False,
) -> None:
    """Write a new key pair; sign with RAYMLOPS_SIGNING_KEY, verify with RAYMLOPS_TRUSTED_KEYS."""
    from raymlops.registry import SIGNING_KEY_ENV, TRUSTED_KEYS_ENV, write_key_pair

    private, public = guard(write_key_pair, out)
    if as_json:
        print_json({"private_key": str(private), "public_key": str(public)})
        return
    err_console.print(f"private key: {private} (keep it secret; mode 0600)", highlight=False)
    err_console.print(f"public key:  {public}", highlight=False)
    err_console.print(
        f"sign new versions:  export {SIGNING_KEY_ENV}={private}\n"
        f"verify every load:  export {TRUSTED_KEYS_ENV}={public}",
        highlight=False,
    )
