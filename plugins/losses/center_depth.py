"""The centre-depth regulariser: the middle of the picture should be nearer than its border.

With d = border_mean - centre_mean of the depth map (positive when the object sits in the
middle in front of a far background), the intended loss is ``-weight * log(d)``. The
reference writes ``-weight * log(centre - border)``, the log of a negative number in the
case it wants: its value is NaN and only its gradient happens to be right. Here the loss is

    -weight * log(d)                          for d >= epsilon
    -weight * (log(epsilon) + (d - epsilon) / epsilon)   below epsilon

i.e. the tangent line of -log at epsilon continues it linearly (C1: value and slope agree
at epsilon). It is finite for every d, its gradient equals that of -weight * log(d) where
d >= epsilon, and below epsilon it keeps pushing d up with the constant slope -weight/epsilon.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sjc_core.contracts import BuildContext, RenderOutput
from sjc_plugins.losses.center_depth_options import CenterDepthOptions  # noqa: F401 (re-exported)


def center_mask(height: int, width: int, fraction: float) -> torch.Tensor:
    """Boolean [H, W] mask of the centred window, ``round(fraction * side)`` pixels a side.

    For 64x64 and 50/64 this is rows and columns 7..56, the reference's ``depth[7:-7, 7:-7]``.
    """
    mask = torch.zeros(height, width, dtype=torch.bool)
    top, left, ch, cw = window_box(height, width, fraction)
    mask[top : top + ch, left : left + cw] = True
    return mask


def window_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """Top, left, height and width of the centred window (host integers)."""
    ch = max(1, min(height - 1, round(fraction * height)))
    cw = max(1, min(width - 1, round(fraction * width)))
    return (height - ch) // 2, (width - cw) // 2, ch, cw


def log_barrier(gap: torch.Tensor, epsilon: float) -> torch.Tensor:
    """-log(gap) for gap >= epsilon, its tangent line below (finite, C1)."""
    safe = torch.clamp(gap, min=epsilon)  # keeps the unused branch's gradient finite
    linear = -(math.log(epsilon) + (gap - epsilon) / epsilon)
    return torch.where(gap >= epsilon, -torch.log(safe), linear)


class CenterDepthLoss:
    def __init__(self, options: CenterDepthOptions) -> None:
        self.options = options
        self._windows: dict[tuple[Any, ...], torch.Tensor] = {}

    def gap(self, depth: torch.Tensor) -> torch.Tensor:
        """border mean - centre mean of a depth map [H, W].

        Weighted sums over the window's mask, not boolean indexing: the pixel counts are
        known on the host, so the loss never waits for the device.
        """
        height, width = depth.shape[-2], depth.shape[-1]
        _, _, ch, cw = window_box(height, width, self.options.center_fraction)
        inside = ch * cw
        window = self._window(height, width, depth)
        centre = (depth * window).sum() / inside
        border = (depth * (1 - window)).sum() / (height * width - inside)
        return border - centre

    def _window(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """The window's mask as a float tensor on ``like``'s device, uploaded once per size."""
        key = (height, width, str(like.device), like.dtype)
        cached = self._windows.get(key)
        if cached is None:
            mask = center_mask(height, width, self.options.center_fraction)
            cached = self._windows[key] = mask.to(dtype=like.dtype).to(like.device, non_blocking=True)
        return cached

    def __call__(self, render: RenderOutput, progress: float) -> torch.Tensor:
        depth = render.depth
        if depth.ndim != 2:
            depth = depth.reshape(depth.shape[-2], depth.shape[-1])
        return self.options.weight * log_barrier(self.gap(depth), self.options.epsilon)


def build_center_depth(options: CenterDepthOptions, ctx: BuildContext) -> CenterDepthLoss:
    return CenterDepthLoss(options)


