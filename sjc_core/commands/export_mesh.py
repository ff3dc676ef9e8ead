"""``sjc export-mesh``: a coloured triangle mesh of a run's density field (PLY, OBJ or GLB)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "export-mesh"


def command(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `sjc run`")],
    threshold: Annotated[
        Optional[float],
        typer.Option(help="density of the surface (default ln2/voxel: one voxel of it is half opaque)"),
    ] = None,
    resolution: Annotated[
        Optional[int],
        typer.Option(min=8, max=1024, help="lattice size N (N^3 samples; default: the voxel grid, or 128)"),
    ] = None,
    format_: Annotated[
        Optional[str], typer.Option("--format", help="ply, obj or glb (default: from --out, else ply)")
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="mesh path (default: RUN_DIR/mesh/mesh.FORMAT)")] = None,
    colors: Annotated[
        str,
        typer.Option(help="auto, features (pixel priors), views (decoded renders; latent priors) or none"),
    ] = "auto",
    views: Annotated[int, typer.Option(min=1, max=64, help="colors=views: number of decoded views")] = 12,
    largest: Annotated[bool, typer.Option("--largest", help="keep only the largest connected piece")] = False,
) -> None:
    """Extract the surface of a run's field with marching cubes and write it with vertex colours."""
    from sjc_core import engine
    from sjc_core.mesh import export_run_mesh

    with engine.using_run(run_dir, "sjc export-mesh"):  # not while a run trains there
        report = export_run_mesh(
            run_dir,
            threshold=threshold,
            resolution=resolution,
            fmt=format_,
            out=out,
            colors=colors,
            views=views,
            largest=largest,
        )
    typer.echo(report)
