"""Colours of surface points: read off the field (pixel priors) or projected from decoded views (latents).

Both vertex colours (:mod:`sjc_core.mesh`) and texture baking (:mod:`sjc_core.mesh.texture`)
colour a list of surface points with normals; these functions do it for any such list.

- :func:`field_colors`: the field's features half a voxel inside the surface, mapped from
  the prior's value range to [0, 1]. Inside, because the surface sits where the density
  ramps up, and the colour there blends in the empty space in front.
- :func:`project_views`: render views, decode them, project every point into every view
  and average the decoded colour over the views that see it. A view sees a point when it
  lies in front of the camera, inside the picture, faces it, and its distance agrees with
  the rendered depth within ``tolerance`` (occluded points fail); each view's weight is
  the squared cosine between the normal and the direction to the camera, so a view that
  looks squarely at the surface counts most and grazing views, whose pixels smear
  the surface, hardly count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

ProgressFn = Callable[[str, int, int], None]
ViewRenderer = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]
"""``render(c2w) -> (rgb [3, h, w] in [0, 1], depth [size, size])`` for one camera."""


def _report(progress: ProgressFn | None, phase: str, done: int, total: int) -> None:
    if progress is not None:
        progress(phase, done, total)


def field_device(field: Any) -> torch.device:
    """The device of the field's first parameter or buffer (CPU for plain objects)."""
    for tensor in list(field.parameters()) + list(field.buffers()) if isinstance(field, torch.nn.Module) else []:
        return tensor.device
    return torch.device("cpu")


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Colours in [0, 1] (clipped) to uint8."""
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@torch.no_grad()
def field_colors(field: Any, points: np.ndarray, normals: np.ndarray, value_range: tuple[float, float],
                 inset: float, chunk: int = 1 << 16, progress: ProgressFn | None = None,
                 phase: str = "colours") -> np.ndarray:
    """Field features ``inset`` inside the surface, mapped from ``value_range`` to [0, 1] ([N, 3] float)."""
    low, high = value_range
    device = field_device(field)
    inner = points - inset * normals
    chunks = max(1, -(-len(inner) // chunk))
    out = np.zeros((len(inner), 3))
    _report(progress, phase, 0, chunks)
    for index, start in enumerate(range(0, len(inner), chunk), 1):
        batch = torch.as_tensor(inner[start : start + chunk], dtype=torch.float32, device=device)
        out[start : start + len(batch)] = field.features(batch)[:, :3].double().cpu().numpy()
        _report(progress, phase, index, chunks)
    if not len(inner):
        _report(progress, phase, 1, 1)
    return np.clip((out - low) / (high - low), 0.0, 1.0)


def feature_colors(field: Any, vertices: np.ndarray, normals: np.ndarray, value_range: tuple[float, float],
                   inset: float, chunk: int = 1 << 16) -> np.ndarray:
    """Vertex colours (uint8) from the field's features just inside the surface."""
    return to_uint8(field_colors(field, vertices, normals, value_range, inset, chunk))


@torch.no_grad()
def project_views(
    points: np.ndarray,
    normals: np.ndarray,
    render: ViewRenderer,
    poses: list[np.ndarray],
    K: np.ndarray,
    size: int,
    tolerance: float,
    progress: ProgressFn | None = None,
    phase: str = "colours",
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean decoded colour of the views that see each point, and which points any view saw.

    Returns ``(colours [N, 3] in [0, 1], seen [N] bool)``; unseen points are 0.5 grey.
    ``render`` gives a decoded picture of any size covering the same view as the ``size`` x
    ``size`` depth map. ``progress`` hears ``(phase, i, len(poses))`` after each view.
    """
    import torch.nn.functional as F

    total = np.zeros((len(points), 3))
    weight = np.zeros(len(points))
    homo = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    _report(progress, phase, 0, len(poses))
    for index, c2w in enumerate(poses, 1):
        rgb, depth = render(c2w)
        cam = homo @ np.linalg.inv(c2w).T  # camera space, looking along -z
        proj = cam[:, :3] @ K.T
        in_front = proj[:, 2] > 1e-6
        uv = proj[:, :2] / np.where(in_front, proj[:, 2], 1.0)[:, None]
        # grid_sample coordinates (align_corners=False): pixel centre c -> (c + 0.5) / size * 2 - 1
        grid = torch.as_tensor((uv + 0.5) / size * 2 - 1, dtype=torch.float32)[None, None]
        seen_depth = F.grid_sample(depth[None, None].float().cpu(), grid, mode="bilinear", padding_mode="border",
                                   align_corners=False)[0, 0, 0].numpy()
        colour = F.grid_sample(rgb[None].float().cpu(), grid, mode="bilinear", padding_mode="border",
                               align_corners=False)[0, :, 0].numpy().T
        distance = np.linalg.norm(points - c2w[:3, 3], axis=1)
        to_camera = (c2w[:3, 3] - points) / np.maximum(distance, 1e-9)[:, None]
        facing = np.einsum("ij,ij->i", normals, to_camera)
        inside = (np.abs(grid[0, 0].numpy()) <= 1).all(axis=1)
        # two-sided: at silhouettes the depth blends in the far background and the test fails,
        # which keeps background colour out of the average
        visible = in_front & inside & (facing > 0) & (np.abs(distance - seen_depth) <= tolerance)
        w = np.where(visible, facing**2, 0.0)
        total += w[:, None] * colour
        weight += w
        _report(progress, phase, index, len(poses))
    seen = weight > 0
    colors = np.full((len(points), 3), 0.5)
    colors[seen] = total[seen] / weight[seen, None]
    return np.clip(colors, 0.0, 1.0), seen


def fill_from_nearest(points: np.ndarray, colors: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Unseen points take the colour of the nearest seen point (in 3D); all grey when none was seen."""
    if seen.any() and not seen.all():
        from scipy.spatial import cKDTree

        colors = colors.copy()
        _, nearest = cKDTree(points[seen]).query(points[~seen])
        colors[~seen] = colors[seen][nearest]
    return colors


@torch.no_grad()
def view_colors(
    vertices: np.ndarray,
    normals: np.ndarray,
    render: ViewRenderer,
    poses: list[np.ndarray],
    K: np.ndarray,
    size: int,
    tolerance: float,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Vertex colours (uint8) from decoded views; vertices no view sees copy the nearest seen vertex.

    ``progress`` hears ``("colours", i, len(poses))`` after each view.
    """
    colors, seen = project_views(vertices, normals, render, poses, K, size, tolerance, progress)
    return to_uint8(fill_from_nearest(vertices, colors, seen))


def decoded_view_renderer(field: Any, prior: Any, render_size: int, fov_deg: float) -> ViewRenderer:
    """``render(c2w) -> (decoded rgb [3, h, w], depth [size, size])`` at the training render size."""
    import torch.nn.functional as F

    from sjc_core.render.cameras import intrinsics
    from sjc_core.render.view import render_view

    K = intrinsics(fov_deg, render_size, render_size)

    @torch.no_grad()
    def render(c2w: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        out = render_view(field, K, c2w, render_size, render_size, keep_weights=False)
        image = out.image[None]
        if render_size != prior.resolution:
            image = F.interpolate(image, size=(prior.resolution,) * 2, mode="bilinear", align_corners=False)
        return prior.to_rgb(image)[0].float().cpu(), out.depth.float().cpu()

    return render
