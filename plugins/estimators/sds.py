"""DreamFusion's score distillation (SDS) on the VE denoiser contract.

DreamFusion noises the render at a timestep drawn uniformly (threestudio: ``randint(0.02 T,
0.98 T)``) and follows ``w(t) (eps_hat - n)`` without the UNet's Jacobian. With
``z = y + sigma n`` and ``eps_hat = (z - D(z; sigma)) / sigma`` (the DDPM sample is z scaled
by sqrt(alpha_bar), which changes neither eps_hat nor n), ``eps_hat - n = (y - D) / sigma``:
the descent direction of SDS is ``w(sigma) (y - D) / sigma`` and the ascent direction this
estimator returns is

    g = scale * w(sigma) * mean_k (D(y + sigma n_k; sigma) - y) / sigma,

PAAS's Eq. 16 times w. What tells the two apart is the noise-level distribution (uniform
over the ladder's indices here, PAAS's own range and random/annealed schedule there) and
the weighting. Classifier-free guidance is the prior's own (its ``denoise`` applies it):
stable-diffusion's ``uncond + s (cond - uncond)`` by default (stable-dreamfusion's), or
threestudio's ``cond + s (cond - uncond)`` with ``guidance_convention = "threestudio"``, with
which this gradient is threestudio's ``compute_grad_sds``, negated (an ascent direction).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sjc_core.training.estimation import (
    Generators,
    denoise_at,
    draw_noise,
    fraction_index,
    ladder_window,
    sds_weight,
)
from sjc_plugins.estimators.sds_options import SdsOptions


class SdsEstimator:
    """Score distillation sampling; see the module docstring for the formula."""

    def __init__(self, options: SdsOptions) -> None:
        self.options = options
        self._last_denoised: torch.Tensor | None = None

    def denoised_target(self) -> torch.Tensor | None:
        """The last step's denoised picture (mean of D over the noise draws), for the viewer."""
        return None if self._last_denoised is None else self._last_denoised.mean(dim=1)

    def window(self, prior: Any) -> np.ndarray:
        """The ladder levels the timestep is drawn from (before the t_range cut)."""
        return ladder_window(prior, self.options.sigma_min, self.options.sigma_max, "estimator")

    def schedule(self, prior: Any, steps: int, rng: np.random.Generator) -> np.ndarray:
        """Each step's level: a ladder index uniform in [int(N t0), int(N t1)] (both included)."""
        window = self.window(prior)
        low = fraction_index(window.size, self.options.t_range[0])
        high = max(fraction_index(window.size, self.options.t_range[1]), low)
        return window[rng.integers(low, high + 1, size=steps)].astype(np.float64)

    @torch.no_grad()
    def gradient(
        self, prior: Any, y: torch.Tensor, sigma: float, progress: float, cond: Any, generator: Generators
    ) -> torch.Tensor:
        o = self.options
        y = y.detach()
        noise = draw_noise(y, o.n_noise, generator)  # [B, K, C, H, W]
        z = y[:, None] + sigma * noise
        denoised = denoise_at(prior, z.reshape(-1, *y.shape[1:]), sigma, cond).reshape(z.shape)
        self._last_denoised = denoised  # a reference; the viewer's mean is taken only when asked
        weight = o.scale * sds_weight(o.weighting, sigma) / sigma
        return weight * (denoised - y[:, None]).mean(dim=1)
