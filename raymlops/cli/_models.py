"""`raymlops models list|show|promote`: the registry."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from raymlops._console import err_console, print_json

from ._common import JsonOpt, StoreOpt, fail, guard

models_app = typer.Typer(no_args_is_help=True, help="The model registry.")


@models_app.command("list")
def models_list(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """List registered models with their versions and aliases."""
    from raymlops.registry import ModelStore

    st = guard(ModelStore, store)
    rows: list[dict[str, Any]] = []
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

    st = guard(ModelStore, store)
    version = guard(st.get, ref)
    payload = {
        "name": version.name,
        "version": version.version,
        "uri": version.uri,
        "aliases": version.aliases,
        "signed": version.signed,
        "key_id": version.key_id,
        "signature_verified": version.trusted,
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
    signed = f"signed by key {version.key_id}" if version.signed else "unsigned"
    trust = " (signature verified)" if version.trusted else ""
    err_console.print(f"signature: {signed}{trust}", highlight=False)
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

    st = guard(ModelStore, store)
    parsed = guard(parse_ref, ref)
    if parsed.version is None:
        fail(f"promote needs NAME:VERSION, got {ref!r}")
    guard(st.set_alias, parsed.name, alias, parsed.version)
    err_console.print(f"{parsed.name}@{alias} -> {parsed.version}", highlight=False)
