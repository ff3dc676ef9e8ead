"""``sjc view``: the live viewer's page for a finished or interrupted run (its last checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

NAME = "view"


def command(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `sjc run`")],
    port: Annotated[int, typer.Option(help="port of the page (a port in use is an error)")] = 8080,
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every network)")] = "127.0.0.1",
) -> None:
    """Serve a web page of a run's field from any camera, with its turntable, curves and mesh (Ctrl-C stops)."""
    from sjc_core.viewer.server import check_port, require_viewer_extra

    require_viewer_extra("sjc view")
    check_port(host, port)  # before the models load: a taken port is one line at once
    from sjc_core.commands.common import registry
    from sjc_core.viewer.server import stop_server
    from sjc_core.viewer.session import open_run, serve

    server, page = open_run(run_dir, registry(), host, port)
    typer.echo("serving; Ctrl-C stops", err=True)
    try:
        serve(page)
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(server)
