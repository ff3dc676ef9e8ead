"""``sjc fit``: reconstruct a field from posed pictures with a photometric loss."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sjc_core.errors import SjcError

NAME = "fit"


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
) -> None:
    """Fit a voxel field to posed pictures (photometric loss); report held-out PSNR."""
    from sjc_core.commands.common import registry
    from sjc_core.fit.fitting import fit_posed_images
    from sjc_core.fit.settings import FitSettings

    field_options = _field_options(set_ or [])
    if grid_size is not None:
        field_options["grid_size"] = grid_size
    settings = FitSettings(
        steps=_positive("--steps", steps),
        lr=_positive("--lr", lr),
        optimizer=_choice("--optimizer", optimizer, ("adam", "adamax")),  # type: ignore[arg-type]
        batch_rays=_positive("--batch-rays", batch_rays),
        sparsity=float(_non_negative("--sparsity", sparsity)),
        resolution=None if resolution is None else _positive("--resolution", resolution),
        holdout=None if holdout is None else _non_negative("--holdout", holdout),
        z_up=z_up,
        scale=_scale(scale),
        center=center,
        background=_colour(background),
        near=None if near is None else float(_non_negative("--near", near)),
        seed=_non_negative("--seed", seed),
        subpixel=_positive("--subpixel", subpixel),
        video_frames=_non_negative("--video-frames", video_frames),
        eval_every=_non_negative("--eval-every", eval_every),
        device=_device_setting(device),
        field_options=field_options,
    )
    out_dir = out if out is not None else Path("runs") / f"fit-{data_dir.resolve().name or 'data'}"
    result = fit_posed_images(
        data_dir, out_dir, settings, registry(), log=lambda line: typer.echo(line, err=True), overwrite=overwrite
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


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise SjcError(f"{name}: must be positive, got {value}")
    return value


def _non_negative(name: str, value: float) -> float:
    if value < 0:
        raise SjcError(f"{name}: must be 0 or more, got {value}")
    return value


def _device_setting(value: str) -> str:
    from sjc_core.devices import check_device_setting

    try:
        return check_device_setting(value)
    except ValueError as exc:
        raise SjcError(f"--device: {exc} (got {value!r})") from None


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
    return _positive("--scale", value)


def _colour(text: str) -> tuple[float, float, float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
        raise SjcError(f"--background: expected R,G,B (or one grey value) in [0, 1], got {text!r}")
    return (values[0], values[1], values[2])
