"""Per-sample weights of volume rendering, w_j = alpha_j * T_j, with an analytic backward.

The reference's order of operations (alpha = 1 - exp(-sigma * step), exclusive
transmittance by cumprod); autograd through cumprod is slow and divides by 1 - alpha, so
:class:`VolumeWeights` gives dL/dsigma in closed form. Split from :mod:`sjc_core.render`:
fields with their own fused foreground (voxel, hashgrid) use it too.
"""

from __future__ import annotations

from typing import Any

import torch


def weights_forward(sigma: torch.Tensor, step: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """alpha = 1 - exp(-sigma*step), exclusive transmittance, w = alpha * T (reference order).

    Returns (w, alpha, inclusive transmittance) for the analytic backward.
    """
    alpha = 1 - torch.exp(-sigma * step)
    inclusive = torch.cumprod(1 - alpha, dim=1)
    exclusive = torch.ones_like(inclusive)
    exclusive[:, 1:] = inclusive[:, :-1]
    return alpha * exclusive, alpha, inclusive


def weights_backward(
    grad_w: torch.Tensor, w: torch.Tensor, inclusive: torch.Tensor, step: float
) -> torch.Tensor:
    """dL/dsigma from dL/dw along each ray (rows of [n, k]).

    With T_j = exp(-step * sum_{i<j} sigma_i): dw_j/dsigma_j = step * T_{j+1} and
    dw_i/dsigma_j = -step * w_i for i > j, so
    dL/dsigma_j = step * (g_j * T_{j+1} - sum_{i>j} g_i w_i).
    """
    gw = grad_w * w
    later = torch.flip(torch.cumsum(torch.flip(gw, [1]), dim=1), [1]) - gw  # sum over i > j
    return (grad_w * inclusive - later) * step


class VolumeWeights(torch.autograd.Function):
    """Per-sample weights from densities [n, k] with an analytic backward (cumprod's
    autograd backward is slow and divides by 1 - alpha)."""

    @staticmethod
    def forward(ctx: Any, sigma: torch.Tensor, step: float) -> torch.Tensor:  # type: ignore[override]
        w, _, inclusive = weights_forward(sigma, step)
        ctx.save_for_backward(w, inclusive)
        ctx.step = step
        return w

    @staticmethod
    def backward(ctx: Any, grad_w: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        w, inclusive = ctx.saved_tensors
        return weights_backward(grad_w, w, inclusive, ctx.step), None
