"""Pictures of a fitted field: held-out evaluation (PSNR and ground truth | render | depth
pictures) and the turntable, all rendered past the fit's near plane.

Split from :mod:`sjc_core.fit` so the training loop reads on its own; ``sjc fit`` and the
benchmarks score fields with these functions.
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
) -> tuple[np.ndarray, np.ndarray]:
    """A whole picture with the near plane: (rgb in [0, 1] [H, W, 3], depth [H, W]).

    ``render_view`` has no near plane, so this builds the same rays and chunks itself.
    """
    from sjc_core.render.rays import camera_rays
    from sjc_core.render.view import render_rays

    device = field_module.aabb.device
    ro, rd = camera_rays(k, pose, height, width, subpixel)
    ro, rd = ro.to(device), rd.to(device)
    t_min, t_max = clipped_range(ro, rd, field_module.aabb, near)
    images, depths = [], []
    for s in range(0, ro.shape[0], chunk_rays):
        out = render_rays(field_module, ro[s : s + chunk_rays], rd[s : s + chunk_rays], t_min[s : s + chunk_rays], t_max[s : s + chunk_rays])
        images.append(out.image.float().cpu())
        depths.append(out.depth.float().cpu())
    f = int(subpixel)
    image = torch.cat(images).view(height, f, width, f, -1).mean(dim=(1, 3))
    depth = torch.cat(depths).view(height, f, width, f).mean(dim=(1, 3))
    return ((image + 1.0) / 2.0).clamp(0.0, 1.0).numpy(), depth.numpy()


def evaluate(
    field_module: torch.nn.Module, data: PosedImages, subpixel: int, near: float, folder: Path | None
) -> dict[str, Any]:
    """PSNR per view and of the pooled error; with ``folder``, write ground truth | render | depth."""
    errors = []
    k = data.intrinsics()
    for index in range(len(data)):
        rgb, depth = render_camera(field_module, k, data.c2w[index], data.height, data.width, subpixel, near)
        errors.append(float(np.mean((rgb - data.images[index]) ** 2)))
        if folder is not None:
            factor = max(1, VIDEO_MIN_SIZE // max(data.height, 1))
            picture = pictures.side_by_side(
                pictures.to_uint8(data.images[index]), pictures.to_uint8(rgb), _depth_picture(depth)
            )
            stem = Path(data.names[index]).with_suffix("").as_posix().replace("/", "_")
            pictures.write_image(folder / f"{index:03d}_{stem}.png", pictures.upscale(picture, factor))
    return {"psnr": psnr(float(np.mean(errors))), "per_view": [round(psnr(e), 3) for e in errors]}


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
    factor = max(1, VIDEO_MIN_SIZE // max(data.height, 1))
    k = data.intrinsics()
    frames = []
    for pose in poses:
        rgb, depth = render_camera(field_module, k, pose, data.height, data.width, settings.subpixel, near)
        frames.append(pictures.upscale(pictures.side_by_side(pictures.to_uint8(rgb), _depth_picture(depth)), factor))
    return pictures.write_video(path, frames, fps=settings.fps, warn=warn)


def _depth_picture(depth: np.ndarray) -> np.ndarray:
    from sjc_core.render.composite import BACKGROUND_DEPTH

    foreground = depth[depth < BACKGROUND_DEPTH * 0.99]
    near = float(foreground.min()) if foreground.size else 0.0
    far = float(foreground.max()) if foreground.size else BACKGROUND_DEPTH
    return pictures.depth_to_rgb(np.minimum(depth, far), near=near, far=far)
