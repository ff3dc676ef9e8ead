"""Unconditional pixel-space priors from diffusers ``UNet2DModel`` repositories.

Two families, told apart by the scheduler config that ships with the model:

- VP (``DDPMScheduler`` and relatives, e.g. google/ddpm-ema-bedroom-256): epsilon/v/x0
  prediction at integer timesteps; the ladder is the scheduler's alphas_cumprod in VE form
  and sigma is snapped to it.
- VE score models (``ScoreSdeVeScheduler``, NCSN++ such as google/ncsnpp-ffhq-256): the
  UNet embeds log(sigma) with Fourier features and divides its output by sigma, so it
  returns the score itself; ``D = x + sigma^2 * score``. It is a continuous-time model, so
  sigma is used as given, not snapped. These models were trained on images in [0, 1]
  (score_sde's ``centered = False``; diffusers' pipeline clamps its samples to [0, 1]),
  while the prior works in [-1, 1]: x and sigma are halved on the way in, D doubled on
  the way out, and the ladder is twice the scheduler's sigmas.

The engine renders at ``render_resolution`` (64) and resizes to the model's 256, as the
reference does. A ``model`` that is a checkpoint file (``.pt``, ``.pth``, ``.ckpt``,
``.safetensors``) is a guided-diffusion UNet, such as the authors' release files: see
:mod:`sjc_plugins.priors.adm_prior`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from sjc_core.contracts import BuildContext, View
from sjc_core.errors import SjcError
from sjc_plugins.priors.pixel_options import (  # noqa: F401 (re-exported: the options live there)
    BEDROOM_MODEL,
    FFHQ_MODEL,
    FfhqOptions,
    LsunBedroomOptions,
    PixelOptions,
    adm_checkpoint,
)
from sjc_plugins.priors._diffusion_common import (
    VpLadder,
    batch_sigma,
    load_pretrained,
    load_scheduler,
    resolve_dtype,
    resolve_for_loading,
    square_size,
)

if TYPE_CHECKING:
    from sjc_plugins.priors.adm_prior import AdmPrior


class PixelPrior:
    """D(x; sigma) over RGB images in [-1, 1], [B, 3, S, S] with S the model's sample size."""

    value_range = (-1.0, 1.0)

    def __init__(self, unet: Any, scheduler: Any, options: PixelOptions, model_ref: str) -> None:
        from diffusers import ScoreSdeVeScheduler

        self.unet = unet
        self.channels = int(unet.config.in_channels)
        self.resolution = square_size(unet.config.sample_size, "UNet")
        self.render_resolution = min(options.render_resolution, self.resolution)
        self.score_model = isinstance(scheduler, ScoreSdeVeScheduler)
        data_range = options.data_range
        if data_range == "auto":
            data_range = "[0,1]" if self.score_model else "[-1,1]"
        # model pixels = scale * prior pixels + offset; a noise level scales the same way
        self.scale, self.offset = (0.5, 0.5) if data_range == "[0,1]" else (1.0, 0.0)
        if self.score_model:
            if unet.config.time_embedding_type != "fourier":
                raise SjcError(
                    f"prior.model: '{model_ref}' pairs a ScoreSdeVeScheduler with a UNet that is not "
                    "conditioned on sigma (time_embedding_type must be 'fourier')"
                )
            self.ladder = None
            scheduler.set_sigmas(scheduler.config.num_train_timesteps)
            model_sigmas = scheduler.discrete_sigmas.to(torch.float64)
            self.prediction_type = "score"
        else:
            self.ladder = VpLadder.from_scheduler(scheduler, model_ref)
            model_sigmas = self.ladder.sigmas
            self.prediction_type = self.ladder.prediction_type
        self.model_sigmas = model_sigmas  # float64, in the network's pixel units
        self.sigmas = (model_sigmas / self.scale).to(torch.float32)

    def condition(self, view: View | None) -> None:
        """Unconditional models ignore the view."""
        return None

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        """D(x; sigma) with every step on the device: no value of x or sigma visits the host."""
        batch = x.shape[0]
        sigma64 = batch_sigma(sigma, batch, x.device) * self.scale  # in model units from here on
        x_model = x.float() * self.scale + self.offset
        dtype, device = self.unet.dtype, self.unet.device
        if self.ladder is None:
            s = sigma64.to(device=device, dtype=torch.float32)
            score = self.unet(x_model.to(dtype), s.to(dtype)).sample.float()
            denoised = x_model + s.view(-1, 1, 1, 1) ** 2 * score
        else:
            timesteps, snapped = self.ladder.snap(sigma64)
            x_in = VpLadder.network_input(x_model, snapped).to(dtype)
            output = self.unet(x_in, timesteps.to(device)).sample.float()
            prediction = output[:, : self.channels]  # learned-variance models append a variance half
            denoised = self.ladder.denoised(x_model, snapped, prediction)
        return ((denoised - self.offset) / self.scale).to(x.dtype)

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() + 1) / 2).clamp(0, 1)


def _unet_subfolders(source: Any) -> tuple[str | None, ...]:
    """Where the UNet may be: newer repositories use unet/ + scheduler/, older ones the top level."""
    if source.has_file("unet/config.json"):
        return ("unet",)
    if source.has_file("config.json"):
        return (None,)
    return ("unet", None)  # nothing local to look at (downloads on): try both


def build_pixel_prior(options: PixelOptions, ctx: BuildContext) -> PixelPrior | AdmPrior:
    checkpoint = adm_checkpoint(options.model, ctx.base_dir)
    if checkpoint is not None:  # a guided-diffusion file: no diffusers needed
        from sjc_plugins.priors.adm_prior import build_adm_prior

        return build_adm_prior(options, ctx, checkpoint)
    source = resolve_for_loading(options, ctx, probes=("unet/config.json", "config.json"))
    from diffusers import UNet2DModel

    device = torch.device(ctx.device)
    dtype = resolve_dtype(options.dtype, device)
    candidates = _unet_subfolders(source)
    for attempt, subfolder in enumerate(candidates):
        try:
            scheduler = load_scheduler(source, "scheduler" if subfolder else None)
            unet = load_pretrained(UNet2DModel, source, subfolder, "UNet", torch_dtype=dtype)
            break
        except SjcError:
            if attempt == len(candidates) - 1:
                raise
    unet.to(device).eval().requires_grad_(False)
    return PixelPrior(unet, scheduler, options, source.ref)


