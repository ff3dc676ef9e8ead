"""Pictures of a trained field: one view beside its depth, and the turntable video.

Split out of ``engine`` because ``sjc render`` and the end of a run both draw them, and
neither needs the training loop. ``sjc_core.engine`` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from sjc_core import artifacts
from sjc_core.cameras import intrinsics, test_path
from sjc_core.contracts import Prior
from sjc_core.recipe import Recipe
from sjc_core.render import BACKGROUND_DEPTH, render_view

if TYPE_CHECKING:
    from sjc_core.trainer import CameraPlan, Components


def object_depth_range(depth: torch.Tensor) -> tuple[float | None, float | None]:
    """Near and far of the object's own pixels (those mostly opaque: nearer than half the
    background's depth), so the depth panel shows the object's shape rather than one flat
    silhouette against the far background; (None, None) when nothing is that near."""
    values = depth.detach().float().reshape(-1)
    near_enough = values[values < BACKGROUND_DEPTH / 2]
    if near_enough.numel() < 2:
        return None, None
    near, far = float(near_enough.min()), float(near_enough.max())
    return (near, far) if far > near else (None, None)


def view_picture(prior: Prior, scored: torch.Tensor, depth: torch.Tensor, height: int = 256) -> np.ndarray:
    """The prior's picture beside the depth map, enlarged for viewing."""
    with torch.no_grad():
        rgb = artifacts.to_uint8(prior.to_rgb(scored)[0])
    depth_rgb = artifacts.depth_to_rgb(depth, *object_depth_range(depth))
    pane = artifacts.side_by_side(rgb, depth_rgb)
    factor = max(1, height // pane.shape[0])
    return artifacts.upscale(pane, factor)


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
            pictures.append(view_picture(parts.prior, scored, render.depth))
            if on_frame:
                on_frame(index + 1, len(poses))
    parts.field.train()
    written = artifacts.write_video(out_path, pictures, fps=camera.fps)
    return written, pictures
