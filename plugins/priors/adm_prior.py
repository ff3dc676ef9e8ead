"""The ffhq / lsun-bedroom priors on the authors' guided-diffusion (ADM) checkpoints.

Conventions of the reference's ``adapt_gddpm.py`` (``GuidedDDPM``), which this follows:

- the checkpoints were trained with guided-diffusion's linear schedule: 1000 betas from
  1e-4 to 0.02 (float64), ``alpha_bar = cumprod(1 - beta)``; the VE noise level of timestep
  t is ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` (about 0.010 to 157);
- a requested sigma is snapped to the nearest of those 1000 levels (absolute difference),
  and the network sees the VP sample ``x / sqrt(1 + sigma^2)`` at that level's timestep;
- the output's first 3 channels are the noise prediction (the learned-variance half is
  dropped), and ``D = x - sigma * eps`` with the snapped sigma.

Images are in [-1, 1], as guided-diffusion trained them. The engine renders at
``render_resolution`` (64) and resizes to the model's 256, as the reference does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sjc_core.contracts import BuildContext, View
from sjc_core.training.paas import vp_sigmas
from sjc_plugins.priors._diffusion_common import VpLadder, batch_sigma, resolve_dtype
from sjc_plugins.priors.adm_checkpoint import load_adm
from sjc_plugins.priors.adm_unet import AdmUNet
from sjc_plugins.priors.pixel_options import PixelOptions

TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02  # guided-diffusion's get_named_beta_schedule("linear", 1000)


def linear_schedule_sigmas(steps: int = TIMESTEPS) -> torch.Tensor:
    """The linear-beta schedule's VE noise levels, ascending with the timestep (float64)."""
    scale = 1000 / steps  # guided-diffusion scales the end points for other step counts
    betas = torch.linspace(scale * BETA_START, scale * BETA_END, steps, dtype=torch.float64)
    return vp_sigmas(torch.cumprod(1 - betas, dim=0))


class AdmPrior:
    """D(x; sigma) over RGB images in [-1, 1], [B, 3, S, S], from a guided-diffusion UNet."""

    value_range = (-1.0, 1.0)

    def __init__(self, unet: AdmUNet, options: PixelOptions) -> None:
        self.unet = unet
        self.channels = unet.config.in_channels
        self.resolution = unet.config.image_size
        self.render_resolution = min(options.render_resolution, self.resolution)
        self.ladder = VpLadder(sigmas=linear_schedule_sigmas(), prediction_type="epsilon")
        self.sigmas = self.ladder.sigmas.to(torch.float32)

    def condition(self, view: View | None) -> None:
        """Unconditional models ignore the view."""
        return None

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        """D(x; sigma) with every step on the device: no value of x or sigma visits the host."""
        sigma64 = batch_sigma(sigma, x.shape[0], x.device)
        timesteps, snapped = self.ladder.snap(sigma64)
        x_in = VpLadder.network_input(x.float(), snapped)
        output = self.unet(x_in, timesteps).float()
        eps = output[:, : self.channels]  # the learned-variance half is not used
        return self.ladder.denoised(x.float(), snapped, eps).to(x.dtype)

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() + 1) / 2).clamp(0, 1)


def build_adm_prior(options: PixelOptions, ctx: BuildContext, path: Path) -> AdmPrior:
    """Load the checkpoint (float32), then move it to the run's device and precision."""
    device = torch.device(ctx.device)
    unet = load_adm(path, num_heads=options.num_heads, num_head_channels=options.num_head_channels)
    unet.to(device=device, dtype=resolve_dtype(options.dtype, device))
    return AdmPrior(unet, options)
