"""Terms that keep ``sjc fit`` from explaining pictures with density in free space.

``distortion`` is mip-NeRF 360's distortion loss (Barron et al. 2022, eq. 15) for the fit's
samples, which are evenly spaced along each ray (one ``step_size`` apart): the weights of a
ray pay for being spread out, so a ray settles on one surface instead of a haze of floaters
in front of it. With spacing d and sample indices i, j:

    L = d * (sum_ij w_i w_j |i - j| + (1/3) sum_i w_i^2)

and the double sum is computed in O(k) per ray with cumulative sums.
"""

from __future__ import annotations

import torch


def distortion(weights: torch.Tensor, spacing: float) -> torch.Tensor:
    """Mean over rays of the distortion loss of ``weights`` [N, k] (samples ``spacing`` apart)."""
    if weights.numel() == 0:
        return weights.sum()
    index = torch.arange(weights.shape[1], device=weights.device, dtype=weights.dtype)
    before = torch.cumsum(weights, dim=1) - weights  # sum of w_j for j < i
    moment_before = torch.cumsum(weights * index, dim=1) - weights * index  # sum of j w_j for j < i
    spread = 2.0 * (weights * (index * before - moment_before)).sum(dim=1)  # sum_ij w_i w_j |i - j|
    own = (weights**2).sum(dim=1) / 3.0
    return spacing * (spread + own).mean()
