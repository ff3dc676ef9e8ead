"""Pictures of a fitted field: held-out evaluation (PSNR and ground truth | render | depth
pictures) and the turntable, all rendered past the fit's near plane.

Apart from :mod:`sjc_core.fit.fitting` so the training loop reads on its own; ``sjc fit`` and
the benchmarks score fields with these functions. Depth panels are drawn as the run's
turntable draws them (:mod:`sjc_core.runs.turntable`): surface depth, one scale for all the
views of an evaluation or a turntable, with its key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sjc_core.files import pictures
from sjc_core.fit.datasets import PosedImages
from sjc_core.fit.poses import camera_directions
from sjc_core.render.cameras import orbit_path
from sjc_core.runs.turntable import depth_range, picture_with_depth

if TYPE_CHECKING:
    from sjc_core.fit.settings import FitSettings

VIDEO_MIN_SIZE = 256  # turntable frames are enlarged (nearest) to at least this many pixels


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio of pictures in [0, 1]."""
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def clipped_range(ro: torch.Tensor, rd: torch.Tensor, aabb: torch.Tensor, near: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Box entry and exit, with the entry pushed to at least ``near`` (exit never before entry)."""
    from sjc_core.render.spans import box_intersect

    t_min, t_max = box_intersect(ro, rd, aabb)
    t_min = t_min.clamp(min=near)
    return t_min, torch.maximum(t_max, t_min)


@torch.no_grad()
def render_camera(
    field_module: torch.nn.Module,
    k: np.ndarray,
    pose: np.ndarray,
    height: int,
    width: int,
    subpixel: int = 1,
    near: float = 0.0,
    chunk_rays: int = 8192,
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """A whole picture with the near plane: (rgb in [0, 1] [H, W, 3], depth [H, W], opacity [H, W]).

    ``render_view`` has no near plane, so this builds the same rays and chunks itself.
    """
    from sjc_core.render.rays import camera_rays
    from sjc_core.render.view import render_rays

    device = field_module.aabb.device
    ro, rd = camera_rays(k, pose, height, width, subpixel)
    ro, rd = ro.to(device), rd.to(device)
    t_min, t_max = clipped_range(ro, rd, field_module.aabb, near)
    images, depths, opacities = [], [], []
    for s in range(0, ro.shape[0], chunk_rays):
        out = render_rays(field_module, ro[s : s + chunk_rays], rd[s : s + chunk_rays], t_min[s : s + chunk_rays], t_max[s : s + chunk_rays])
        images.append(out.image.float().cpu())
        depths.append(out.depth.float().cpu())
        opacities.append(out.opacity.float().cpu())
    f = int(subpixel)
    image = torch.cat(images).view(height, f, width, f, -1).mean(dim=(1, 3))
    depth = torch.cat(depths).view(height, f, width, f).mean(dim=(1, 3))
    opacity = torch.cat(opacities).view(height, f, width, f).mean(dim=(1, 3))
    return ((image + 1.0) / 2.0).clamp(0.0, 1.0).numpy(), depth, opacity


def evaluate(
    field_module: torch.nn.Module, data: PosedImages, subpixel: int, near: float, folder: Path | None
) -> dict[str, Any]:
    """PSNR per view and of the pooled error; with ``folder``, write ground truth | render | depth.

    With alpha in the pictures, also ``free_space_opacity``: the mean rendered opacity where
    the pictures are transparent (floaters show up there).
    """
    errors, renders, free = [], [], []
    k = data.intrinsics()
    for index in range(len(data)):
        rgb, depth, opacity = render_camera(field_module, k, data.c2w[index], data.height, data.width, subpixel, near)
        errors.append(float(np.mean((rgb - data.images[index]) ** 2)))
        if data.alphas is not None:
            free.append(opacity.numpy()[data.alphas[index] < 0.5])
        if folder is not None:
            renders.append((index, rgb, depth, opacity))
    shared = depth_range([r[2] for r in renders], [r[3] for r in renders])  # one depth scale for all views
    for index, rgb, depth, opacity in renders:
        truth = pictures.to_uint8(data.images[index])
        panel = picture_with_depth(pictures.to_uint8(rgb), depth, opacity, VIDEO_MIN_SIZE, shared)
        factor = panel.shape[1] // (2 * data.width)  # ground truth enlarged as the render beside it
        row = np.zeros((panel.shape[0] - data.height * factor, data.width * factor, 3), dtype=np.uint8)
        picture = np.concatenate([np.concatenate([pictures.upscale(truth, factor), row], axis=0), panel], axis=1)
        stem = Path(data.names[index]).with_suffix("").as_posix().replace("/", "_")
        pictures.write_image(folder / f"{index:03d}_{stem}.png", picture)
    result: dict[str, Any] = {"psnr": psnr(float(np.mean(errors))), "per_view": [round(psnr(e), 3) for e in errors]}
    if free and sum(part.size for part in free):
        result["free_space_opacity"] = round(float(np.concatenate(free).mean()), 5)
    return result


def baseline_psnr(train: PosedImages, heldout: PosedImages) -> float:
    """PSNR of predicting the training pictures' mean colour at every held-out pixel."""
    mean_colour = train.images.reshape(-1, 3).mean(axis=0)
    return psnr(float(np.mean((heldout.images - mean_colour) ** 2)))


def turntable(
    field_module: torch.nn.Module, data: PosedImages, path: Path, settings: FitSettings, near: float, warn: Callable[[str], None]
) -> Path:
    """An orbit at the data's median camera radius and elevation: picture beside depth."""
    directions, radii = camera_directions(data.c2w)
    elevation = float(np.degrees(np.arcsin(np.clip(np.median(directions[:, 1]), -1.0, 1.0))))
    poses = orbit_path(float(np.median(radii)), elevation, settings.video_frames)
    k = data.intrinsics()
    views = [render_camera(field_module, k, pose, data.height, data.width, settings.subpixel, near) for pose in poses]
    shared = depth_range([depth for _, depth, _ in views], [opacity for _, _, opacity in views])
    frames = [
        picture_with_depth(pictures.to_uint8(rgb), depth, opacity, VIDEO_MIN_SIZE, shared) for rgb, depth, opacity in views
    ]
    return pictures.write_video(path, frames, fps=settings.fps, warn=warn)
