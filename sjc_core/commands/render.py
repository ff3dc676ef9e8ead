"""``sjc render``: re-render a run's turntable from its checkpoint, or its HD final videos."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "render"


def command(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `sjc run`")],
    frames: Annotated[
        Optional[int], typer.Option(min=1, help="frames of the video (default: the recipe's; 140 with --hd)")
    ] = None,
    subpixel: Annotated[
        Optional[int], typer.Option(min=1, max=8, help="f x f rays per pixel (default 1; 4 with --hd)")
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(help="video path (default: RUN_DIR/render/turntable.mp4); with --hd a folder (RUN_DIR/render/hd)"),
    ] = None,
    hd: Annotated[
        bool, typer.Option("--hd", help="final high-resolution videos: subpixel render, downsample, decode in chunks")
    ] = False,
    resolution: Annotated[
        int, typer.Option(min=8, max=1024, help="--hd: size of the image fed to the decoder (SD decodes 128 to 1024px)")
    ] = 128,
    fps: Annotated[Optional[int], typer.Option(min=1, help="frames per second (default: the recipe's camera.fps)")] = None,
    skip: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="--hd: fraction of the spiral skipped at its overhead start")
    ] = 0.3,
    decode_batch: Annotated[int, typer.Option(min=1, help="--hd: frames decoded per decoder call")] = 1,
    chunk_rays: Annotated[int, typer.Option(min=256, help="--hd: rays rendered at once (lower it to save memory)")] = 16384,
) -> None:
    """Render the turntable of a (finished or interrupted) run again, or with --hd its final high-resolution videos."""
    from sjc_core.runs import engine

    _check_options(run_dir, frames, fps, decode_batch, chunk_rays, hd, out)
    with engine.using_run(run_dir, "sjc render"):  # not while a run trains there
        _render(run_dir, frames, subpixel, out, hd, resolution, fps, skip, decode_batch, chunk_rays)


MAX_CHUNK_RAYS = 1 << 24  # rays rendered at once: some GB of samples already


def _check_options(
    run_dir: Path, frames: Optional[int], fps: Optional[int], decode_batch: int, chunk_rays: int, hd: bool,
    out: Optional[Path],
) -> None:
    """The counts within their recipe keys' limits, and no link where the video goes, before
    the run folder is locked or anything is built (one line each)."""
    from sjc_core.commands.common import count_flag
    from sjc_core.files import atomic
    from sjc_core.recipes.values import MAX_FPS, MAX_TEST_FRAMES
    from sjc_core.runs.folder import refuse_run_links

    held = "every frame is held in memory until the video is written, as for camera.test_frames"
    if frames is not None:
        count_flag("--frames", frames, 1, MAX_TEST_FRAMES, held)
    if fps is not None:
        count_flag("--fps", fps, 1, MAX_FPS)
    count_flag("--decode-batch", decode_batch, 1, MAX_TEST_FRAMES)
    count_flag("--chunk-rays", chunk_rays, 256, MAX_CHUNK_RAYS)
    if Path(run_dir).is_dir():
        refuse_run_links(Path(run_dir), "render/hd" if hd else "render/turntable.mp4")
        if out is not None:
            atomic.check_no_links(out, Path(run_dir))  # only what lies inside the run folder


def _render(
    run_dir: Path,
    frames: Optional[int],
    subpixel: Optional[int],
    out: Optional[Path],
    hd: bool,
    resolution: int,
    fps: Optional[int],
    skip: float,
    decode_batch: int,
    chunk_rays: int,
) -> None:
    from sjc_core.commands.common import registry
    from sjc_core.runs import engine
    from sjc_core.runs.progress import Progress

    run = engine.load_run(run_dir, registry())
    folder, recipe, parts, plan = run.folder, run.recipe, run.parts, run.plan

    if hd:
        from sjc_core.render.hd import HdOptions, render_hd

        options = HdOptions(
            frames=frames or HdOptions.frames,
            subpixel=subpixel or HdOptions.subpixel,
            resolution=resolution,
            fps=fps,
            skip_fraction=skip,
            decode_batch=decode_batch,
            chunk_rays=chunk_rays,
        )
        bar = Progress(options.frames, label="render --hd ")
        result = render_hd(parts, recipe, plan, out or folder.root / "render" / "hd", options,
                           on_frame=lambda i, n: bar.update(i))
        bar.close()
        height, width = result.frame_size
        typer.echo(
            f"wrote {result.image_video} and {result.depth_video} "
            f"({result.frame_count} frames of {width}x{height}, checkpoint step {run.step})"
        )
        return

    bar = Progress(frames or recipe.settings.camera.test_frames, label="render ")
    target = out or folder.root / "render" / "turntable.mp4"
    if fps is not None:
        camera = recipe.settings.camera.model_copy(update={"fps": fps})
        recipe = replace(recipe, settings=recipe.settings.model_copy(update={"camera": camera}))
    written, _ = engine.render_turntable(
        parts, recipe, plan, target, frames=frames, subpixel=subpixel or 1, on_frame=lambda i, n: bar.update(i)
    )
    bar.close()
    typer.echo(f"wrote {written} (checkpoint step {run.step})")
