"""Pictures of a trained field: one view beside its depth, and the turntable video.

Apart from :mod:`sjc_core.runs.engine` because ``sjc render`` and the end of a run both draw
them, and neither needs the training loop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from sjc_core.contracts import Prior
from sjc_core.files import pictures as files_pictures
from sjc_core.recipes.recipe import Recipe
from sjc_core.render.cameras import intrinsics, test_path
from sjc_core.render.composite import BACKGROUND_DEPTH
from sjc_core.render.view import render_view

if TYPE_CHECKING:
    from sjc_core.training.trainer import CameraPlan, Components


def depth_panel(depth: torch.Tensor, opacity: torch.Tensor | None = None) -> np.ndarray:
    """The depth map as a grey picture of the object's shape: near bright, far dark.

    A pixel's depth mixes its surface with the background at ``BACKGROUND_DEPTH``; with the
    opacity, ``(depth - (1 - opacity) * BACKGROUND_DEPTH) / opacity`` recovers the surface's
    own depth, the grey scale spans the object's depth range (2nd to 98th percentile of
    pixels at least 10 % opaque) and transparent pixels fade to black. Without the opacity,
    the range is that of the pixels nearer than half the background's depth.
    """
    d = depth.detach().float().cpu()
    if opacity is None:
        near, far = object_depth_range(d)
        return files_pictures.depth_to_rgb(d, near, far)
    alpha = opacity.detach().float().cpu().clamp(0, 1)
    seen = alpha >= 0.1
    if int(seen.sum()) < 2:
        return files_pictures.depth_to_rgb(torch.zeros_like(d), 0.0, 1.0)  # nothing there: black
    surface = (d - (1 - alpha) * BACKGROUND_DEPTH) / alpha.clamp(min=1e-6)
    near, far = (float(torch.quantile(surface[seen], q)) for q in (0.02, 0.98))
    shade = (1 - (surface - near) / max(far - near, 1e-6)).clamp(0, 1) * alpha * seen
    return files_pictures.to_uint8(shade.numpy())


def object_depth_range(depth: torch.Tensor) -> tuple[float | None, float | None]:
    """Near and far of the pixels nearer than half the background's depth (mostly opaque
    ones), or (None, None) when fewer than two are."""
    values = depth.detach().float().reshape(-1)
    near_enough = values[values < BACKGROUND_DEPTH / 2]
    if near_enough.numel() < 2:
        return None, None
    near, far = float(near_enough.min()), float(near_enough.max())
    return (near, far) if far > near else (None, None)


def view_picture(
    prior: Prior, scored: torch.Tensor, depth: torch.Tensor, opacity: torch.Tensor | None = None, height: int = 256
) -> np.ndarray:
    """The prior's picture beside the depth panel (:func:`depth_panel`), enlarged for viewing."""
    with torch.no_grad():
        rgb = files_pictures.to_uint8(prior.to_rgb(scored)[0])
    pane = files_pictures.side_by_side(rgb, depth_panel(depth, opacity))
    factor = max(1, height // pane.shape[0])
    return files_pictures.upscale(pane, factor)


def render_turntable(
    parts: Components,
    recipe: Recipe,
    plan: CameraPlan,
    out_path: Path,
    frames: int | None = None,
    subpixel: int = 1,
    on_frame: Callable[[int, int], None] | None = None,
) -> tuple[Path, list[np.ndarray]]:
    """Render the recipe's test path and write the video (picture beside depth)."""
    camera = recipe.settings.camera
    if frames is not None:
        camera = camera.model_copy(update={"test_frames": frames})
    size = plan.render_size
    K = intrinsics(camera.test_fov, size, size)
    pictures = []
    parts.field.eval()
    poses = test_path(camera, plan.radius)
    with torch.no_grad():
        for index, pose in enumerate(poses):
            render = render_view(parts.field, K, pose, size, size, subpixel=subpixel, keep_weights=False)
            scored = render.image[None]
            if size != parts.prior.resolution:
                scored = F.interpolate(scored, size=(parts.prior.resolution,) * 2, mode="bilinear", align_corners=False)
            pictures.append(view_picture(parts.prior, scored, render.depth, render.opacity))
            if on_frame:
                on_frame(index + 1, len(poses))
    parts.field.train()
    written = files_pictures.write_video(out_path, pictures, fps=camera.fps)
    return written, pictures
