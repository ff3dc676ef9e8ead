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


DepthRange = tuple[float, float]


def surface_depth(depth: torch.Tensor, opacity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(surface depth, opacity, seen) on the CPU: a pixel's depth mixes its surface with the
    background at ``BACKGROUND_DEPTH``; ``(depth - (1 - opacity) * BACKGROUND_DEPTH) / opacity``
    recovers the surface's own, meaningful where the pixel is at least 10 % opaque (seen)."""
    d = depth.detach().float().cpu()
    alpha = opacity.detach().float().cpu().clamp(0, 1)
    surface = (d - (1 - alpha) * BACKGROUND_DEPTH) / alpha.clamp(min=1e-6)
    return surface, alpha, alpha >= 0.1


def depth_range(depths: list[torch.Tensor], opacities: list[torch.Tensor]) -> DepthRange | None:
    """One near/far for a set of views (2nd and 98th percentile of every seen pixel's surface
    depth), so that a shade means the same distance in every frame; None when nothing is seen."""
    seen_depths = []
    for depth, opacity in zip(depths, opacities):
        surface, _, seen = surface_depth(depth, opacity)
        seen_depths.append(surface[seen])
    values = torch.cat(seen_depths) if seen_depths else torch.zeros(0)
    if values.numel() < 2:
        return None
    if values.numel() > 1_000_000:  # quantile's limit; an even subsample gives the same percentiles
        values = values[:: values.numel() // 1_000_000 + 1]
    near, far = (float(torch.quantile(values, q)) for q in (0.02, 0.98))
    return near, max(far, near + 1e-6)


def depth_panel(depth: torch.Tensor, opacity: torch.Tensor | None = None, shared: DepthRange | None = None) -> np.ndarray:
    """The depth map as a grey picture of the object's shape: near bright, far dark.

    With the opacity, the grey scale spans ``shared`` (one range for a whole turntable or
    evaluation, from :func:`depth_range`) or this view's own range, over the surface depths
    of :func:`surface_depth`, and transparent pixels fade to black. Without the opacity, the
    range is that of the pixels nearer than half the background's depth.
    """
    if opacity is None:
        near, far = object_depth_range(depth.detach().float().cpu())
        return files_pictures.depth_to_rgb(depth.detach().float().cpu(), near, far)
    surface, alpha, seen = surface_depth(depth, opacity)
    limits = shared or depth_range([depth], [opacity])
    if limits is None:
        return files_pictures.depth_to_rgb(torch.zeros_like(surface), 0.0, 1.0)  # nothing there: black
    near, far = limits
    shade = (1 - (surface - near) / (far - near)).clamp(0, 1) * alpha * seen
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


def picture_with_depth(
    rgb: np.ndarray, depth: torch.Tensor, opacity: torch.Tensor, height: int = 256, shared: DepthRange | None = None
) -> np.ndarray:
    """A picture beside its depth panel, enlarged for viewing, with the depth's key underneath
    (near and far of ``shared``, or of this view alone)."""
    limits = shared or depth_range([depth], [opacity])
    pane = files_pictures.side_by_side(rgb, depth_panel(depth, opacity, limits))
    factor = max(1, height // pane.shape[0])
    pane = files_pictures.upscale(pane, factor)
    width = pane.shape[1] - pane.shape[1] // 2
    legend = (
        files_pictures.depth_legend(width, *limits) if limits is not None
        else np.zeros((files_pictures.LEGEND_HEIGHT, width, 3), dtype=np.uint8)  # same frame size
    )
    return files_pictures.with_legend(pane, legend)


def view_picture(
    prior: Prior, scored: torch.Tensor, depth: torch.Tensor, opacity: torch.Tensor, height: int = 256,
    shared: DepthRange | None = None,
) -> np.ndarray:
    """The prior's picture of ``scored`` beside the depth panel (:func:`picture_with_depth`)."""
    with torch.no_grad():
        rgb = files_pictures.to_uint8(prior.to_rgb(scored)[0])
    return picture_with_depth(rgb, depth, opacity, height, shared)


def render_turntable(
    parts: Components,
    recipe: Recipe,
    plan: CameraPlan,
    out_path: Path,
    frames: int | None = None,
    subpixel: int = 1,
    on_frame: Callable[[int, int], None] | None = None,
) -> tuple[Path, list[np.ndarray]]:
    """Render the recipe's test path and write the video (picture beside depth, every frame's
    depth on one scale, with its key)."""
    camera = recipe.settings.camera
    if frames is not None:
        camera = camera.model_copy(update={"test_frames": frames})
    size = plan.render_size
    K = intrinsics(camera.test_fov, size, size)
    views = []
    parts.field.eval()
    poses = test_path(camera, plan.radius)
    with torch.no_grad():
        for index, pose in enumerate(poses):
            render = render_view(parts.field, K, pose, size, size, subpixel=subpixel, keep_weights=False)
            scored = render.image[None]
            if size != parts.prior.resolution:
                scored = F.interpolate(scored, size=(parts.prior.resolution,) * 2, mode="bilinear", align_corners=False)
            rgb = files_pictures.to_uint8(parts.prior.to_rgb(scored)[0])
            views.append((rgb, render.depth.float().cpu(), render.opacity.float().cpu()))
            if on_frame:
                on_frame(index + 1, len(poses))
    parts.field.train()
    shared = depth_range([depth for _, depth, _ in views], [opacity for _, _, opacity in views])  # one scale
    pictures = [picture_with_depth(rgb, depth, opacity, shared=shared) for rgb, depth, opacity in views]
    written = files_pictures.write_video(out_path, pictures, fps=camera.fps)
    return written, pictures
