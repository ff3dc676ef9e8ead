"""``sjc fit``: reconstruct a field from posed pictures with a photometric loss."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sjc_core.errors import SjcError

NAME = "fit"

MAX_BATCH_RAYS = 1 << 24  # rays per step: some GB of samples already
MAX_SPARSITY = 1e6
MAX_HOLDOUT = 100_000
MAX_SUBPIXEL = 8  # as sjc render --subpixel
MAX_SCALE = 1e6  # as the empirical prior's scale


def command(
    data_dir: Annotated[Path, typer.Argument(help="folder with transforms_train.json / transforms.json and pictures")],
    out: Annotated[Optional[Path], typer.Option(help="output folder (default: runs/fit-<data folder name>)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an earlier fit's results in the output folder")] = False,
    steps: Annotated[int, typer.Option(help="optimisation steps")] = 1000,
    lr: Annotated[float, typer.Option(help="learning rate (decays exponentially to a tenth)")] = 0.1,
    grid_size: Annotated[Optional[int], typer.Option(help="voxels per side (field.grid_size)")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="resize pictures to this width")] = None,
    holdout: Annotated[
        Optional[int],
        typer.Option(help="hold out K training views (default: transforms_test.json if present, else 1 in 10)"),
    ] = None,
    z_up: Annotated[bool, typer.Option("--z-up", help="the data's world is z-up (Blender scenes)")] = False,
    scale: Annotated[str, typer.Option(help="multiply camera positions by this, or 'auto' (mean radius 1.5)")] = "1",
    center: Annotated[bool, typer.Option("--center", help="move the point the cameras look at to the origin")] = False,
    background: Annotated[str, typer.Option(help="colour RGBA pictures are composited on: R,G,B in [0, 1]")] = "1,1,1",
    near: Annotated[
        Optional[float], typer.Option(help="skip samples nearer than this to the eye (default: half the nearest camera's radius)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the field's initialisation and the ray batches")] = 0,
    subpixel: Annotated[int, typer.Option(help="subpixel factor of evaluation renders and the video")] = 1,
    sparsity: Annotated[float, typer.Option(help="weight of the fog-clearing term sum_j log(1 + 10 w_j) per ray")] = 3e-4,
    distortion: Annotated[
        float, typer.Option(help="weight of the distortion loss per ray (mip-NeRF 360): clears floaters (0: off)")
    ] = 0.01,
    alpha_weight: Annotated[
        float, typer.Option(help="pictures with alpha: weight of (opacity - alpha)^2 per ray (0: alpha unused)")
    ] = 1.0,
    batch_rays: Annotated[int, typer.Option(help="rays per step, drawn from all training pictures")] = 4096,
    optimizer: Annotated[str, typer.Option(help="adam or adamax")] = "adam",
    video_frames: Annotated[int, typer.Option(help="frames of the turntable video (0: none)")] = 60,
    eval_every: Annotated[
        int, typer.Option(help="held-out PSNR during training every N steps, shown and logged (0: only at the end)")
    ] = 250,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto")] = "cpu",
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="field option: field.KEY=VALUE or KEY=VALUE (repeatable), e.g. field.density_shift=-2"),
    ] = None,
    viewer: Annotated[bool, typer.Option("--viewer", help="serve a live web page of the fit (viewer extra)")] = False,
    port: Annotated[int, typer.Option(help="--viewer: port of the page (a port in use is an error)")] = 8080,
    host: Annotated[str, typer.Option(help="--viewer: address to listen on (0.0.0.0: every network)")] = "127.0.0.1",
    tensorboard: Annotated[
        bool, typer.Option("--tensorboard", help="write TensorBoard event files to OUT/tensorboard")
    ] = False,
) -> None:
    """Fit a voxel field to posed pictures (photometric loss); report held-out PSNR."""
    from sjc_core.commands.common import registry
    from sjc_core.fit.fitting import fit_posed_images
    from sjc_core.fit.settings import FitSettings
    from sjc_core.viewer.server import check_port, require_tensorboard_extra, require_viewer_extra

    if viewer:  # one line and exit 2 before any picture is read
        require_viewer_extra()
        check_port(host, port)
    if tensorboard:
        require_tensorboard_extra()
    field_options = _field_options(set_ or [])
    if grid_size is not None:
        field_options["grid_size"] = grid_size
    from sjc_core.commands.common import count_flag, number_flag
    from sjc_core.recipes.values import MAX_LR, MAX_RADIUS, MAX_RENDER_SIZE, MAX_SEED, MAX_STEPS, MAX_TEST_FRAMES

    # every count and number within its recipe key's limits, finite, before any picture is read
    settings = FitSettings(
        steps=count_flag("--steps", steps, 1, MAX_STEPS),
        lr=number_flag("--lr", lr, 0.0, MAX_LR, low_open=True),
        optimizer=_choice("--optimizer", optimizer, ("adam", "adamax")),  # type: ignore[arg-type]
        batch_rays=count_flag("--batch-rays", batch_rays, 1, MAX_BATCH_RAYS),
        sparsity=number_flag("--sparsity", sparsity, 0.0, MAX_SPARSITY),
        alpha_weight=number_flag("--alpha-weight", alpha_weight, 0.0, MAX_SPARSITY),
        distortion=number_flag("--distortion", distortion, 0.0, MAX_SPARSITY),
        resolution=None if resolution is None else count_flag("--resolution", resolution, 1, MAX_RENDER_SIZE),
        holdout=None if holdout is None else count_flag("--holdout", holdout, 0, MAX_HOLDOUT),
        z_up=z_up,
        scale=_scale(scale),
        center=center,
        background=_colour(background),
        near=None if near is None else number_flag("--near", near, 0.0, MAX_RADIUS),
        seed=count_flag("--seed", seed, 0, MAX_SEED),
        subpixel=count_flag("--subpixel", subpixel, 1, MAX_SUBPIXEL),
        video_frames=count_flag(
            "--video-frames", video_frames, 0, MAX_TEST_FRAMES,
            "every frame is held in memory until the video is written, as for camera.test_frames",
        ),
        eval_every=count_flag("--eval-every", eval_every, 0, MAX_STEPS),
        device=_device_setting(device),
        field_options=field_options,
    )
    out_dir = out if out is not None else Path("runs") / f"fit-{data_dir.resolve().name or 'data'}"
    import json
    from dataclasses import asdict

    from sjc_core.viewer.watch import watching_fit

    shown = json.dumps(asdict(settings), indent=1, default=str)
    with watching_fit(shown, settings.steps, out_dir, viewer, host, port, tensorboard) as observer:
        result = fit_posed_images(
            data_dir, out_dir, settings, registry(), log=lambda line: typer.echo(line, err=True), overwrite=overwrite,
            observer=observer,
        )
    held = result.metrics.get("psnr_heldout")
    summary = f"held-out PSNR {held:.2f} dB" if held is not None else f"train PSNR {result.metrics['psnr_train']:.2f} dB"
    typer.echo(f"{summary}; wrote {result.out_dir}")


def _field_options(assignments: list[str]) -> dict[str, object]:
    from sjc_core.recipes.recipe import parse_value

    options: dict[str, object] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip().removeprefix("field.")
        if not sep or not key or "." in key:
            raise SjcError(f"--set {assignment!r}: expected field.KEY=VALUE, e.g. --set field.density_shift=-2")
        options[key] = parse_value(text.strip())
    return options


def _device_setting(value: str) -> str:
    from sjc_core.commands.common import device_problem

    problem = device_problem(value)
    if problem:
        raise SjcError(problem)
    return value


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SjcError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _scale(text: str) -> float | str:
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise SjcError(f"--scale: expected a positive number or 'auto', got {text!r}") from None
    from sjc_core.commands.common import number_flag

    return number_flag("--scale", value, 0.0, MAX_SCALE, low_open=True)


def _colour(text: str) -> tuple[float, float, float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):  # NaN fails too
        raise SjcError(f"--background: expected R,G,B (or one grey value) in [0, 1], got {text!r}")
    return (values[0], values[1], values[2])
