"""``sjc validate``: print the fully resolved recipe, or every problem in it.

It runs every check ``sjc run`` makes before training: the recipe's values, and what
building the plugins would find (folders that must hold images, the extras a prior
imports, the device), so a recipe that validates does not fail when its run starts.
Weights that are not downloaded yet are a note on stderr, not an error: the recipe is
fine, this machine lacks them (``sjc run`` stops at once with the same line).
"""

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
    """Check a recipe (and what its run needs) and print it with every default filled in, as TOML."""
    from sjc_core.commands.common import registry
    from sjc_core.recipes import toml_out
    from sjc_core.recipes.preflight import check_ready
    from sjc_core.recipes.recipe import load_recipe

    resolved = load_recipe(recipe, registry(), set_ or [])
    for note in check_ready(resolved):  # this machine lacks something the recipe is fine without
        typer.echo(f"sjc: note: {note}", err=True)
    typer.echo(toml_out.dumps(resolved.resolved()), nl=False)
