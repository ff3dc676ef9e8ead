"""``sjc export-mesh``: a coloured or UV-textured triangle mesh of a run's density field (PLY, OBJ or GLB)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

NAME = "export-mesh"

THRESHOLD_HELP = (
    "density of the surface (default: the 10th percentile of the densities where rays from eight views turn half opaque; "
    "ln 2 / voxel if no ray ends opaque)"
)


class _PhaseBars:
    """``progress(phase, done, total)`` for :func:`sjc_core.mesh.export.export_run_mesh`: a line per phase on stderr."""

    def __init__(self) -> None:
        self.phase: str | None = None
        self.bar: Any = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        from sjc_core.runs.progress import Progress

        if phase != self.phase:
            self.close()
            self.phase, self.bar = phase, Progress(total, label=f"export-mesh {phase} ")
        self.bar.update(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.phase, self.bar = None, None


MAX_THRESHOLD = 1e30  # a density no float32 field exceeds meaningfully


def _check_options(run_dir: Path, threshold: Optional[float], out: Optional[Path]) -> None:
    """A finite positive threshold and no link where the mesh goes, before anything is loaded."""
    from sjc_core.commands.common import number_flag
    from sjc_core.files import atomic
    from sjc_core.runs.folder import refuse_run_links

    if threshold is not None:
        number_flag("--threshold", threshold, 0.0, MAX_THRESHOLD, low_open=True)
    if Path(run_dir).is_dir():
        refuse_run_links(Path(run_dir))
        if out is not None:
            atomic.check_no_links(out, Path(run_dir))


def command(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `sjc run`")],
    threshold: Annotated[
        Optional[float],
        typer.Option(help=THRESHOLD_HELP),
    ] = None,
    resolution: Annotated[
        Optional[int],
        typer.Option(min=8, max=1024, help="lattice size N (N^3 samples; default: the voxel grid, or 128)"),
    ] = None,
    format_: Annotated[
        Optional[str],
        typer.Option(
            "--format",
            help="ply, obj or glb (default: from --out, else ply; with --texture obj or glb, both when neither is given)",
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(help="mesh path (default: RUN_DIR/mesh/mesh.FORMAT; with --texture RUN_DIR/mesh/textured.FORMAT)"),
    ] = None,
    colors: Annotated[
        str,
        typer.Option(help="auto, features (pixel priors), views (decoded renders; latent priors) or none"),
    ] = "auto",
    views: Annotated[int, typer.Option(min=1, max=64, help="colors=views: number of decoded views")] = 12,
    largest: Annotated[bool, typer.Option("--largest", help="keep only the largest connected piece")] = False,
    texture: Annotated[
        Optional[int],
        typer.Option(
            metavar="N",
            help="bake an N x N texture (a power of two, 64..8192) over a UV atlas (xatlas) and write "
            "OBJ + MTL + PNG and GLB instead of vertex colours",
        ),
    ] = None,
    faces: Annotated[
        Optional[int],
        typer.Option(metavar="N", help="decimate to about N faces (quadric edge collapse, fast-simplification)"),
    ] = None,
    smooth: Annotated[
        int, typer.Option(metavar="ITER", help="Taubin smoothing passes before decimation (keeps the volume)")
    ] = 0,
) -> None:
    """Extract the surface of a run's field with marching cubes; write it with vertex colours or a texture."""
    from sjc_core.commands.common import registry
    from sjc_core.mesh.export import export_run_mesh
    from sjc_core.runs import engine

    _check_options(run_dir, threshold, out)
    bars = _PhaseBars()  # progress on stderr; stdout gets only the report
    try:
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
                texture=texture,
                faces=faces,
                smooth=smooth,
                progress=bars,
                registry=registry(),
            )
    finally:
        bars.close()
    typer.echo(report)
