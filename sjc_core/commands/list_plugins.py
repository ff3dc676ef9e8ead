"""``sjc list-plugins``: what the installed distributions provide."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from sjc_core.errors import SjcError

NAME = "list-plugins"


def command(
    kind: Annotated[Optional[str], typer.Option(help="only this kind: priors, fields, losses or estimators")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List priors, fields, losses and estimators with their distribution, description and options."""
    from sjc_core.commands.common import registry
    from sjc_core.plugins import KINDS

    if kind is not None and kind not in KINDS:
        raise SjcError(f"--kind: unknown kind '{kind}' (known: {', '.join(KINDS)})")
    reg = registry()
    kinds = [kind] if kind else list(KINDS)
    rows = [
        {
            "kind": info.kind,
            "name": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "module": info.module,
            "description": info.description,
            "options": info.option_rows(),
        }
        for k in kinds
        for info in reg.of_kind(k)
    ]
    if as_json:
        typer.echo(json.dumps({"plugins": rows, "warnings": reg.warnings}, indent=2))
        return
    for k in kinds:
        typer.echo(f"{k}:")
        infos = [r for r in rows if r["kind"] == k]
        if not infos:
            typer.echo("  (none installed)")
        for row in infos:
            typer.echo(f"  {row['name']}  [{row['distribution']} {row['version']}]  {row['description']}")
            for opt in row["options"]:
                default = "required" if opt["required"] else f"default {json.dumps(opt['default'])}"
                typer.echo(f"      {opt['name']}: {opt['type']} ({default})  {opt['description']}".rstrip())
