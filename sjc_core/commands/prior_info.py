"""``sjc prior-info MODEL``: what a model file or folder is -- kind, prediction, resolution,
channels, parameter count -- read from its headers and configs, without building the model
or running anything: a quick check before a long run.

The core knows no model formats: each installed prior's options model may define a
classmethod ``describe_model(path) -> dict | None`` (as it may define ``preflight``), and the
first that recognises the path answers. ``MODEL`` may also be a recipe (``.toml``): its
``prior.model`` is described, resolved against the recipe's folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

NAME = "prior-info"


def command(
    model: Annotated[
        Path, typer.Argument(help="model file (.safetensors, .ckpt, .pt), diffusers folder, or recipe (.toml)")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Say what a model file or folder is (kind, resolution, channels, parameters) without running it."""
    from sjc_core.commands.common import registry
    from sjc_core.errors import SjcError
    from sjc_core.inputs import check_regular

    plugins = registry()
    path = _model_of_recipe(model, plugins) if model.suffix.lower() == ".toml" else model
    if not path.is_dir():
        check_regular(path, None, "a model", "model")  # missing, a FIFO, a device: one line
    describers = [
        info for info in plugins.of_kind("priors") if callable(getattr(info.options, "describe_model", None))
    ]
    for info in describers:
        found = info.options.describe_model(path)
        if found:
            _print(found, as_json)
            return
    names = ", ".join(info.name for info in describers) or "none installed"
    raise SjcError(f"model: '{path}' is not a model the installed priors recognise (describers: {names})")


def _model_of_recipe(recipe: Path, plugins: Any) -> Path:
    """The recipe's ``prior.model`` as a local path (relative to the recipe's folder)."""
    from sjc_core.errors import SjcError
    from sjc_core.recipes.recipe import load_recipe

    loaded = load_recipe(recipe, plugins)
    model = getattr(loaded.prior.options, "model", None)
    if not isinstance(model, str):
        raise SjcError(f"{recipe}: prior.model: the {loaded.prior.info.name} prior names no model file or folder")
    path = Path(model).expanduser()
    for candidate in [path] if path.is_absolute() else [loaded.base_dir / path, path]:
        if candidate.exists():
            return candidate
    raise SjcError(
        f"{recipe}: prior.model: '{model}' is no local file or folder (prior-info reads local models only)"
    )


def _print(description: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(description, indent=2))
        return
    for key, value in description.items():
        if isinstance(value, dict):
            value = ", ".join(
                f"{part} {count:,}" if isinstance(count, int) else f"{part} {count}"
                for part, count in value.items()
            )
        elif isinstance(value, int):
            value = f"{value:,}"
        typer.echo(f"{key}: {value}")
