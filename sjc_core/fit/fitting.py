"""Photometric reconstruction: fit a field to posed pictures (the counterpart of a NeRF run).

This is the known-pose baseline the SJC runs are measured against: the same voxel field
and renderer, but the loss is the mean squared error between rendered rays and the
pictures' pixels. Each step draws a random batch of rays from all training pictures
(far more varied than one whole view a step), renders them, and takes one Adam step
with an exponentially decaying learning rate.

Two additions keep the fit honest on views it was not trained on (measured on the
snowman, 24 views at 32x32, 300 steps: held-out PSNR 17.7 dB without either, 23.3 dB
with the near plane, 29.2 dB with both at sparsity 1e-3; training PSNR about 30 dB
throughout):

- a near plane (default: half the nearest camera's distance to the origin) so voxels
  right in front of one camera cannot paint its picture;
- a sparsity term, ``sparsity * mean over rays of sum_j log(1 + 10 w_j)`` (the emptiness
  regulariser's shape), which clears the initial fog and the floaters. On the 100-view
  demo (64^3, 500 steps) 3e-4 did best: 38.6 dB against 38.3 dB at 1e-3, which also
  eats into dim surfaces that look like the grey backdrop, and 38.1 dB at 1e-4, which
  leaves fog.

The field renders features in [-1, 1] (the pixel priors' range, so a field whose
background starts at 0 shows mid grey); pictures are compared in [0, 1] after
``(x + 1) / 2``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from sjc_core.contracts import BuildContext
from sjc_core.errors import SjcError
from sjc_core.files import atomic, locks
from sjc_core.fit.datasets import PosedImages, blind_camera_warning, load_posed_images
from sjc_core.fit.folder import check_fit_folder, remove_earlier_fit
from sjc_core.fit.poses import camera_directions
from sjc_core.fit.regularisers import distortion
from sjc_core.fit.settings import FitResult, FitSettings
from sjc_core.fit.transforms import transforms_path
from sjc_core.fit.views import baseline_psnr, clipped_range, evaluate, psnr, turntable
from sjc_core.plugins import Registry
from sjc_core.runs.observer import FitObserver
from sjc_core.training.optim import Adamax


@dataclass(frozen=True)
class Splits:
    train: PosedImages
    heldout: PosedImages | None
    heldout_source: str


def load_splits(data_dir: Path, settings: FitSettings, warn: Callable[[str], None]) -> Splits:
    """Training pictures and held-out pictures (the test split, or views set aside)."""
    common = dict(
        resolution=settings.resolution,
        background=settings.background,
        z_up=settings.z_up,
        box_half=None,  # checked against the field's own box once it is built
        warn=warn,
    )
    train = load_posed_images(data_dir, "train", scale=settings.scale, center=settings.center, **common)
    if settings.resolution is None:
        common["resolution"] = train.width  # a test split of another size is resized to match
    if settings.holdout is None and transforms_path(Path(data_dir), "test") is not None:
        test = load_posed_images(data_dir, "test", scale=train.scale, center=train.offset, **common)
        if (test.height, test.width) != (train.height, train.width):
            raise SjcError(
                f"{test.source}: pictures are {test.width}x{test.height} but the training ones are "
                f"{train.width}x{train.height} (aspect ratios differ)"
            )
        return Splits(train, test, test.source.name)
    count = len(train) // 10 if settings.holdout is None else settings.holdout
    if count == 0:
        return Splits(train, None, "none")
    if count >= len(train):
        raise SjcError(f"--holdout {count}: the data has only {len(train)} training pictures; keep at least one")
    picks = np.unique(np.linspace(0, len(train) - 1, count + 2).round().astype(int)[1:-1])
    if len(picks) < count:
        picks = np.arange(count) * len(train) // count
    keep = [i for i in range(len(train)) if i not in set(picks.tolist())]
    return Splits(train.subset(keep), train.subset(picks.tolist()), f"{count} training views held out")


def warn_blind_cameras(data: PosedImages, field_module: torch.nn.Module, log: Callable[[str], None]) -> None:
    """Warn about training cameras that see nothing of the field's box (they teach nothing)."""
    aabb = getattr(field_module, "aabb", None)
    half = float(aabb.abs().max()) if isinstance(aabb, torch.Tensor) else 1.0
    message = blind_camera_warning(data, half)
    if message:
        log(f"sjc: warning: {message}")


def fit_field_defaults(lr: float) -> dict[str, Any]:
    """Voxel options that differ from SJC's for a photometric fit.

    Features (and the background) start at 0, i.e. mid grey under 2*sigmoid-1, instead of
    random colours; the background texture learns at the grid's rate (SJC keeps it nearly
    frozen at 1e-4), so a white or black backdrop is learnt by the background and not
    painted onto voxels.
    """
    return {"init_features": 0.0, "bg_lr": lr}


def near_plane(data: PosedImages, setting: float | None) -> float:
    """Samples nearer than this to the eye are skipped.

    Without it, voxels just in front of a training camera can paint that camera's picture
    (a "floater" screen no other camera sees), and a held-out camera that flies through
    them sees fog. Object-centric cameras look at the origin from outside the object, so
    half the nearest camera's distance is a safe default.
    """
    if setting is not None:
        return float(setting)
    _, radii = camera_directions(data.c2w)
    return float(0.5 * radii.min())


def build_field(registry: Registry, settings: FitSettings, device: torch.device) -> tuple[torch.nn.Module, BaseModel]:
    """The field through the plugin registry, with its options validated (one line per problem)."""
    from sjc_core.recipes.error_lines import format_errors

    info = registry.get("fields", settings.field_name, where="--field")
    wanted = dict(settings.field_options)
    if settings.field_name == "voxel":  # photometric defaults; --set wins
        for key, value in fit_field_defaults(settings.lr).items():
            wanted.setdefault(key, value)
    try:
        options = info.options.model_validate(wanted)
    except ValidationError as exc:
        raise SjcError(*format_errors(exc, info.options, prefix="field.")) from None
    ctx = BuildContext(device=device, channels=3, value_range=(-1.0, 1.0), seed=settings.seed)
    return info.factory(options, ctx).to(device), options


@dataclass
class RayTable:
    """Every training pixel as a ray: origin, unit direction, march range and target colour."""

    origins: torch.Tensor  # [R, 3]
    directions: torch.Tensor  # [R, 3]
    t_min: torch.Tensor  # [R]
    t_max: torch.Tensor  # [R]
    targets: torch.Tensor  # [R, 3] in [-1, 1]
    alphas: torch.Tensor | None = None  # [R] in [0, 1] when the pictures carry alpha

    def __len__(self) -> int:
        return int(self.origins.shape[0])


def training_rays(data: PosedImages, aabb: torch.Tensor, near: float, device: torch.device) -> RayTable:
    """The ray table of every training pixel (row-major per picture, pictures in order)."""
    from sjc_core.render.rays import camera_rays

    k = data.intrinsics()
    origins, directions = [], []
    for pose in data.c2w:
        ro, rd = camera_rays(k, pose, data.height, data.width)
        origins.append(ro)
        directions.append(rd)
    ro, rd = torch.cat(origins), torch.cat(directions)
    t_min, t_max = clipped_range(ro, rd, aabb, near)
    targets = torch.from_numpy(data.images.reshape(-1, 3)) * 2.0 - 1.0
    alphas = None if data.alphas is None else torch.from_numpy(data.alphas.reshape(-1)).to(device)
    return RayTable(*(t.to(device) for t in (ro, rd, t_min, t_max, targets)), alphas=alphas)


def fit_posed_images(
    data_dir: str | Path,
    out_dir: str | Path,
    settings: FitSettings,
    registry: Registry,
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
    observer: FitObserver | None = None,
) -> FitResult:
    """Fit, evaluate on held-out views, and write renders, video, metrics and checkpoint.

    ``out_dir`` must be new, empty or (with ``overwrite``) hold an earlier fit; it is
    locked while the fit runs. A failed write is one line naming the file (``SjcError``).
    ``observer`` (``sjc fit --viewer``) is called after each step, in this thread.
    """
    log = log or _stderr
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    try:
        check_fit_folder(out_dir, overwrite)  # before the pictures are read: refuse at once
        return _fit(data_dir, out_dir, settings, registry, log, overwrite, observer)
    except OSError as exc:
        raise SjcError(atomic.describe_os_error(exc)) from None


def _fit(
    data_dir: Path, out_dir: Path, settings: FitSettings, registry: Registry, log: Callable[[str], None], overwrite: bool,
    observer: FitObserver | None = None,
) -> FitResult:
    device = _device(settings.device)
    splits = load_splits(data_dir, settings, warn=lambda m: log(f"sjc: warning: {m}"))
    train = splits.train
    torch.manual_seed(settings.seed)
    rng = torch.Generator(device="cpu").manual_seed(settings.seed)
    field_module, options = build_field(registry, settings, device)
    warn_blind_cameras(train, field_module, log)

    log(
        f"fit: {len(train)} training views {train.width}x{train.height}, fov {train.fov_deg:.1f} deg, "
        f"held out: {splits.heldout_source}"
        + (f" ({len(splits.heldout)} views)" if splits.heldout is not None else "")
    )
    near = near_plane(train, settings.near)
    rays = training_rays(train, field_module.aabb, near, device)

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SjcError(f"{out_dir}: cannot create the output folder ({atomic.os_cause(exc)})") from None
    with locks.folder_lock(out_dir, "sjc fit"):
        count, size = atomic.remove_stale_temps(out_dir)
        if count:
            log(f"sjc: note: removed {count} temporary file{'s' if count > 1 else ''} ({size / 1e6:.1f} MB) "
                f"left in {out_dir} by a process that was killed")
        check_fit_folder(out_dir, overwrite, locked=True)  # nobody can change it now
        if overwrite:
            remove_earlier_fit(out_dir)
        return _train_and_write(
            data_dir, out_dir, settings, log, splits, field_module, options, near, rays, device, rng, observer
        )


def _train_and_write(
    data_dir: Path,
    out_dir: Path,
    settings: FitSettings,
    log: Callable[[str], None],
    splits: Splits,
    field_module: torch.nn.Module,
    options: BaseModel,
    near: float,
    rays: RayTable,
    device: torch.device,
    rng: torch.Generator,
    observer: FitObserver | None = None,
) -> FitResult:
    from sjc_core.runs.checkpoint import save_checkpoint
    from sjc_core.runs.progress import Progress
    from sjc_core.training.lr_schedule import apply_decay, decay_factor

    train = splits.train
    optimizer_cls = torch.optim.Adam if settings.optimizer == "adam" else Adamax
    optimizer = optimizer_cls(field_module.param_groups(settings.lr))
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    log_path = out_dir / "train_log.jsonl"
    log_path.unlink(missing_ok=True)

    from sjc_core.render.view import render_rays

    progress = Progress(settings.steps, label="fit ")
    began = time.perf_counter()
    running = None
    curve: list[tuple[int, float]] = []  # (step, held-out PSNR) during training
    held_text = ""
    for step in range(1, settings.steps + 1):
        decay = decay_factor(settings.lr_final_ratio, step - 1, settings.steps)
        apply_decay(optimizer, base_lrs, decay)
        picks = torch.randint(0, len(rays), (settings.batch_rays,), generator=rng).to(device)
        out = render_rays(field_module, rays.origins[picks], rays.directions[picks], rays.t_min[picks], rays.t_max[picks])
        loss = torch.mean((out.image - rays.targets[picks]) ** 2)
        total = loss
        if settings.sparsity > 0:
            total = total + settings.sparsity * torch.log1p(10.0 * out.weights).sum(dim=1).mean()
        if settings.distortion > 0:  # weights spread along a ray pay: floaters in front of the surface
            total = total + settings.distortion * distortion(out.weights, float(field_module.step_size))
        if rays.alphas is not None and settings.alpha_weight > 0:  # the pictures say where the object is
            total = total + settings.alpha_weight * torch.mean((out.opacity - rays.alphas[picks]) ** 2)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        mse01 = loss.item() / 4.0  # the same error measured on pictures in [0, 1]
        running = mse01 if running is None else 0.9 * running + 0.1 * mse01
        record: dict[str, Any] = {"step": step, "mse": mse01, "psnr": psnr(mse01), "lr": settings.lr * decay}
        if splits.heldout is not None and settings.eval_every > 0 and step % settings.eval_every == 0:
            held_now = evaluate(field_module, splits.heldout, 1, near, None)["psnr"]
            curve.append((step, held_now))
            record["psnr_heldout"] = held_now
            held_text = f" | held-out {held_now:.2f} dB (best {max(v for _, v in curve):.2f})"
        if step % settings.log_every == 0 or step == settings.steps or "psnr_heldout" in record:
            atomic.append_jsonl(log_path, record)
        progress.update(step, f"loss {mse01:.5f} | train psnr ~{psnr(running):.2f} dB{held_text}")
        if observer is not None:
            observer.after_fit_step(field_module, step, record)
            while observer.should_pause():
                observer.while_fit_paused(field_module)
                time.sleep(0.05)
    progress.close()
    train_seconds = time.perf_counter() - began

    field_module.eval()
    metrics: dict[str, Any] = {
        "data": str(data_dir),
        "steps": settings.steps,
        "train_seconds": round(train_seconds, 2),
        "seconds_per_step": round(train_seconds / max(settings.steps, 1), 4),
        "train_views": len(train),
        "resolution": [train.height, train.width],
        "heldout_source": splits.heldout_source,
        "near": round(near, 4),
    }
    train_eval = train.subset(np.linspace(0, len(train) - 1, min(len(train), 8)).round().astype(int).tolist())
    metrics["psnr_train"] = evaluate(field_module, train_eval, settings.subpixel, near, None)["psnr"]
    if splits.heldout is not None:
        held = evaluate(field_module, splits.heldout, settings.subpixel, near, out_dir / "heldout")
        metrics.update(
            psnr_heldout=held["psnr"],
            psnr_heldout_views=held["per_view"],
            heldout_views=len(splits.heldout),
            baseline_psnr_mean_colour=baseline_psnr(train, splits.heldout),
        )
        if "free_space_opacity" in held:  # pictures with alpha: how much the field paints empty space
            metrics["heldout_free_space_opacity"] = held["free_space_opacity"]
        if curve:  # the held-out curve during training (renders at subpixel 1), and its best point
            best_step, best = max(curve, key=lambda point: point[1])
            metrics.update(
                psnr_heldout_curve=[[point_step, round(value, 3)] for point_step, value in curve],
                psnr_heldout_best=round(best, 3),
                psnr_heldout_best_step=best_step,
            )
        log(
            f"held-out PSNR {held['psnr']:.2f} dB over {len(splits.heldout)} views "
            f"(mean-colour baseline {metrics['baseline_psnr_mean_colour']:.2f} dB); train PSNR {metrics['psnr_train']:.2f} dB"
        )
    else:
        log(f"no held-out views; train PSNR {metrics['psnr_train']:.2f} dB")

    video = None
    if settings.video_frames > 0:
        video = turntable(field_module, train, out_dir / "turntable.mp4", settings, near, warn=log)
        metrics["video"] = video.name
    save_checkpoint(
        out_dir / "field.safetensors",
        settings.steps,
        field_module,
        extra={"field": {"name": settings.field_name, **options.model_dump(mode="json")}, "fit": _settings_json(settings)},
    )
    metrics["checkpoint"] = "field.safetensors"
    metrics["settings"] = _settings_json(settings)
    atomic.write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return FitResult(out_dir=out_dir, metrics=metrics, video=video)


def _settings_json(settings: FitSettings) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(settings), default=str))


def _device(setting: str) -> torch.device:
    from sjc_core.devices import resolve_device

    return resolve_device(setting, where="--device")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)
