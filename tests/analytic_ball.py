"""An exactly rendered ball for the mesh tests: what a decoder would give for each view."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from sjc_core.render.cameras import intrinsics


def ball_renderer(
    size: int, radius: float, colour: Callable[[np.ndarray], np.ndarray], background: float
) -> Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]:
    """``render(c2w) -> (picture [3, 2S, 2S], depth [S, S])`` of a ball of ``radius`` at the
    origin, by ray-sphere intersection; ``colour(points [N, 3]) -> [N, 3]`` paints it. The
    picture is twice the depth map's size, like a decoder's upsampling."""

    def render(c2w: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        K = intrinsics(60.0, size, size)
        cols, rows = np.meshgrid(np.arange(size), np.arange(size))
        cam = np.stack([cols, rows, np.ones_like(cols)], -1).reshape(-1, 3) @ np.linalg.inv(K).T
        dirs = cam @ c2w[:3, :3].T
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        eye = c2w[:3, 3]
        b = dirs @ eye
        disc = b**2 - (eye @ eye - radius**2)
        t = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0)), 10.0)
        rgb = np.asarray(colour(eye + t[:, None] * dirs), dtype=np.float64)
        rgb[disc <= 0] = background
        image = torch.as_tensor(rgb.reshape(size, size, 3)).permute(2, 0, 1)
        image = image.repeat_interleave(2, 1).repeat_interleave(2, 2)
        return image.float(), torch.as_tensor(t.reshape(size, size)).float()

    return render
