"""``sjc validate``: print the fully resolved recipe, or every problem in it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "validate"


def command(
    recipe: Annotated[Path, typer.Argument(help="TOML recipe")],
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="override a value: KEY=VALUE (repeatable)")
    ] = None,
) -> None:
    """Check a recipe and print it with every default filled in, as TOML."""
    from sjc_core import toml_out
    from sjc_core.commands.common import registry
    from sjc_core.recipe import load_recipe

    resolved = load_recipe(recipe, registry(), set_ or [])
    typer.echo(toml_out.dumps(resolved.resolved()), nl=False)
