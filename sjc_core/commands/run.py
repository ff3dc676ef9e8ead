"""``sjc run``: train a recipe into a run folder, or continue one with ``--resume``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "run"


def command(
    recipe: Annotated[Path, typer.Argument(help="TOML recipe")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a value: KEY=VALUE (repeatable)")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run from its last checkpoint")] = False,
    run_dir: Annotated[Optional[Path], typer.Option(help="run folder (default: OUTPUT/NAME-seedSEED)")] = None,
    viewer: Annotated[bool, typer.Option("--viewer", help="serve a live web page of the run (viewer extra)")] = False,
    port: Annotated[int, typer.Option(help="--viewer: port of the page (a port in use is an error)")] = 8080,
    host: Annotated[str, typer.Option(help="--viewer: address to listen on (0.0.0.0: every network)")] = "127.0.0.1",
    tensorboard: Annotated[
        bool, typer.Option("--tensorboard", help="write TensorBoard event files to RUN_DIR/tensorboard (log.tensorboard)")
    ] = False,
) -> None:
    """Lift the recipe's 2D prior to a 3D field; writes views, checkpoints and a turntable."""
    import sys

    from sjc_core.commands.common import registry
    from sjc_core.errors import SjcError
    from sjc_core.recipes.preflight import check_ready
    from sjc_core.recipes.recipe import load_recipe
    from sjc_core.viewer.server import check_port, require_tensorboard_extra, require_viewer_extra

    if viewer:  # one line and exit 2 before anything loads
        require_viewer_extra()
        check_port(host, port)
    loaded = load_recipe(recipe, registry(), set_ or [])
    if tensorboard or loaded.settings.log.tensorboard:
        require_tensorboard_extra("--tensorboard" if tensorboard else "log.tensorboard")
    # validate's checks (extras installed, weights present, the device there), made before
    # torch and the models load: a refusal comes in a second, worded as validate words it.
    # What validate only notes (weights this machine lacks) stops a run: refused here too.
    missing = check_ready(loaded)
    if missing:
        raise SjcError(*missing)
    from sjc_core.runs.folder import RunFolder, default_run_dir

    folder = RunFolder(run_dir or default_run_dir(loaded))
    if resume and folder.recipe.is_file() and folder.is_run():
        saved = load_recipe(folder.recipe, registry(), base_dir=loaded.base_dir)
        if saved.resolved() != loaded.resolved():
            print(f"sjc: note: resuming with the run's own {folder.recipe}, which differs from {recipe}", file=sys.stderr)
        loaded = saved
    from sjc_core.runs import engine
    from sjc_core.viewer.watch import watching

    with watching(loaded, folder.root, viewer, host, port, tensorboard or loaded.settings.log.tensorboard) as observer:
        summary = engine.run(loaded, folder.root, resume=resume, resume_hint=resume_command(recipe, set_ or [], run_dir),
                             observer=observer)
    if summary.state == "interrupted":
        raise typer.Exit(130)
    typer.echo(f"{summary.state}: {summary.run_dir} (step {summary.step})")


def resume_command(recipe: Path, sets: list[str], run_dir: Path | None) -> str:
    """The command the user typed, with ``--resume``: what continues this run."""
    import shlex

    words = ["sjc", "run", str(recipe)]
    for assignment in sets:
        words += ["--set", assignment]
    if run_dir is not None:
        words += ["--run-dir", str(run_dir)]
    return shlex.join([*words, "--resume"])
