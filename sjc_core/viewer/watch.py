"""The observers a command asked for (viewer, TensorBoard), opened and closed around a run."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from sjc_core.recipes.recipe import Recipe
from sjc_core.runs.observer import Observers


@contextmanager
def watching(
    recipe: Recipe, run_dir: Path, viewer: bool, host: str, port: int, tensorboard: bool, stream: TextIO | None = None
) -> Iterator[Observers | None]:
    """None when nothing watches (the plain loop); else the observers, closed afterwards."""
    stream = stream or sys.stderr

    def open_page() -> tuple[Any, Any]:
        from sjc_core.viewer.session import open_live

        return open_live(recipe, host, port, Path(run_dir).name, stream)

    with _observers(open_page if viewer else None, run_dir if tensorboard else None,
                    "viewer: stopped with the run (sjc view RUN_DIR shows it again)", stream) as observers:
        yield observers


@contextmanager
def watching_fit(
    settings_text: str, steps: int, out_dir: Path, viewer: bool, host: str, port: int, tensorboard: bool,
    stream: TextIO | None = None,
) -> Iterator[Observers | None]:
    """:func:`watching` for ``sjc fit`` (its observers take the fit's field and records)."""
    stream = stream or sys.stderr

    def open_page() -> tuple[Any, Any]:
        from sjc_core.viewer.session import open_live_fit

        return open_live_fit(settings_text, steps, host, port, Path(out_dir).name, stream)

    with _observers(open_page if viewer else None, out_dir if tensorboard else None,
                    "viewer: stopped with the fit", stream) as observers:
        yield observers


@contextmanager
def _observers(
    open_page: Callable[[], tuple[Any, Any]] | None, board_dir: Path | None, goodbye: str, stream: TextIO
) -> Iterator[Observers | None]:
    """The page (a server and its observer) and TensorBoard's writer, each when asked for."""
    if open_page is None and board_dir is None:
        yield None
        return
    observers: list[Any] = []
    server = board = None
    try:
        if open_page is not None:
            server, live = open_page()
            observers.append(live)
        if board_dir is not None:
            from sjc_core.viewer.tensorboard import TensorBoardObserver

            board = TensorBoardObserver(board_dir)
            observers.append(board)
        yield Observers(*observers)
    finally:
        if board is not None:
            board.close()
        if server is not None:
            from sjc_core.viewer.server import stop_server

            stop_server(server)
            print(goodbye, file=stream)
