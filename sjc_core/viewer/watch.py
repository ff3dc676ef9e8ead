"""The observers a command asked for (viewer, TensorBoard), opened and closed around a run."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from sjc_core.recipes.recipe import Recipe
from sjc_core.runs.observer import Observers, RunObserver


@contextmanager
def watching(
    recipe: Recipe, run_dir: Path, viewer: bool, host: str, port: int, tensorboard: bool, stream: TextIO | None = None
) -> Iterator[RunObserver | None]:
    """None when nothing watches (the plain loop); else the observers, closed afterwards."""
    if not (viewer or tensorboard):
        yield None
        return
    stream = stream or sys.stderr
    observers: list[RunObserver] = []
    server = board = None
    try:
        if viewer:
            from sjc_core.viewer.session import open_live

            server, live = open_live(recipe, host, port, Path(run_dir).name, stream)
            observers.append(live)
        if tensorboard:
            from sjc_core.viewer.tensorboard import TensorBoardObserver

            board = TensorBoardObserver(run_dir)
            observers.append(board)
        yield Observers(*observers)
    finally:
        if board is not None:
            board.close()
        if server is not None:
            from sjc_core.viewer.server import stop_server

            stop_server(server)
            print("viewer: stopped with the run (sjc view RUN_DIR shows it again)", file=stream)


@contextmanager
def watching_fit(
    settings_text: str, steps: int, out_dir: Path, viewer: bool, host: str, port: int, tensorboard: bool,
    stream: TextIO | None = None,
) -> Iterator[Observers | None]:
    """:func:`watching` for ``sjc fit`` (its observers take the fit's field and records)."""
    if not (viewer or tensorboard):
        yield None
        return
    stream = stream or sys.stderr
    observers: list = []
    server = board = None
    try:
        if viewer:
            from sjc_core.viewer.session import open_live_fit

            server, live = open_live_fit(settings_text, steps, host, port, Path(out_dir).name, stream)
            observers.append(live)
        if tensorboard:
            from sjc_core.viewer.tensorboard import TensorBoardObserver

            board = TensorBoardObserver(out_dir)
            observers.append(board)
        yield Observers(*observers)
    finally:
        if board is not None:
            board.close()
        if server is not None:
            from sjc_core.viewer.server import stop_server

            stop_server(server)
            print("viewer: stopped with the fit", file=stream)
