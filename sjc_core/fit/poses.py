"""Camera poses of posed image sets: where the cameras sit, bringing a scene into the field's
box, and which cameras see nothing of it.

Poses are camera-to-world with the camera looking along its -z axis and +y up in the
picture (OpenGL, as Blender writes them). Our world is y-up; Blender scenes are z-up, so
``Z_UP_TO_Y_UP`` turns the world (not the cameras) by -90 degrees about x.

Cameras inside the field's box are allowed: the renderer clamps the march at the eye, as the
reference does for its radius-1.5 cameras in a [-1, 1]^3 box. A camera that sees no part of
the box cannot teach the field anything; it costs a warning, not an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from sjc_core.errors import SjcError

# Blender's z-up world -> our y-up world: (x, y, z) -> (x, z, -y), a proper rotation.
Z_UP_TO_Y_UP = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


def camera_directions(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each camera sits as seen from the origin: unit direction [N, 3], radius [N].

    Priors built from posed images use these to pick the images nearest a training camera
    and to train at the data's radius.
    """
    eyes = np.asarray(c2w, dtype=np.float64)[..., :3, 3]
    radii = np.linalg.norm(eyes, axis=-1)
    return eyes / np.maximum(radii, 1e-12)[..., None], radii


def normalize_poses(
    c2w: np.ndarray,
    *,
    scale: float | Literal["auto"] = 1.0,
    center: bool | Sequence[float] = False,
    target_radius: float = 1.5,
    where: Path | str = "poses",
) -> tuple[np.ndarray, np.ndarray, float]:
    """Move and scale camera positions so the scene sits in the field's box.

    ``center``: True moves the point nearest to every camera's viewing axis (least
    squares) to the origin; a 3-vector is used as that point. ``scale``: a factor, or
    ``"auto"`` to put the mean camera distance (after centring) at ``target_radius``.
    Rotations are untouched: scaling a scene does not change what a pinhole camera sees.
    Returns the new poses, the point moved to the origin and the factor.
    """
    poses = np.array(c2w, dtype=np.float64, copy=True)
    point = np.zeros(3)
    if center is True:
        point = look_at_point(poses)
    elif center is not False:
        point = np.asarray(center, dtype=np.float64).reshape(3)
    poses[:, :3, 3] -= point
    if scale == "auto":
        mean_radius = float(np.linalg.norm(poses[:, :3, 3], axis=-1).mean())
        if mean_radius < 1e-9:
            raise SjcError(f"{where}: cameras sit at the origin; cannot pick a scale automatically")
        factor = target_radius / mean_radius
    else:
        factor = float(scale)
        if not factor > 0:
            raise SjcError(f"{where}: scale must be positive, got {scale!r}")
    poses[:, :3, 3] *= factor
    return poses, point, factor


def look_at_point(c2w: np.ndarray) -> np.ndarray:
    """The point nearest (least squares) to every camera's optical axis."""
    eyes = c2w[:, :3, 3]
    axes = -c2w[:, :3, 2]
    axes = axes / np.linalg.norm(axes, axis=-1, keepdims=True)
    projector = np.eye(3)[None] - axes[:, :, None] * axes[:, None, :]
    a = projector.sum(axis=0)
    b = (projector @ eyes[:, :, None]).sum(axis=0)[:, 0]
    if np.linalg.cond(a) > 1e8:  # all axes parallel: fall back to the cameras' mean
        return eyes.mean(axis=0)
    return np.linalg.solve(a, b)


def cameras_missing_box(
    c2w: np.ndarray, fov_deg: float, height: int, width: int, box_half: float, probes: int = 17
) -> list[int]:
    """Indices of cameras none of whose probe rays (a grid over the picture) meets the box."""
    from sjc_core.render.cameras import intrinsics

    k_inv = np.linalg.inv(intrinsics(fov_deg, height, width))
    cols = np.linspace(-0.5, width - 0.5, probes)
    rows = np.linspace(-0.5, height - 0.5, probes)
    grid = np.stack(np.meshgrid(cols, rows, indexing="xy"), axis=-1).reshape(-1, 2)
    pixels = np.concatenate([grid, np.ones((grid.shape[0], 1))], axis=1)
    cam_dirs = pixels @ k_inv.T  # camera-space directions (z = -1 in front)
    blind = []
    for index, pose in enumerate(c2w):
        origin = pose[:3, 3]
        if np.all(np.abs(origin) <= box_half):
            continue  # inside the box: every ray starts in it
        dirs = cam_dirs @ pose[:3, :3].T
        dirs = np.where(dirs == 0.0, 1e-12, dirs)
        t1 = (-box_half - origin) / dirs
        t2 = (box_half - origin) / dirs
        t_near = np.minimum(t1, t2).max(axis=-1)
        t_far = np.maximum(t1, t2).min(axis=-1)
        if not np.any((t_far >= np.maximum(t_near, 0.0))):
            blind.append(index)
    return blind
