"""The mvdream prior: MVDream's multi-view latent denoiser in the VE convention.

It scores ``views`` renders of one object at once (``views_per_step``): the trainer renders
that many cameras a step, 360/views degrees apart in azimuth (MVDream: 4 at 90 degrees), and
asks :meth:`MVDreamPrior.condition_views` for their condition: the prompt's text embeddings and
each camera's MVDream embedding (:mod:`sjc_plugins.priors.mvdream_cameras`). ``denoise`` then
runs :class:`~sjc_plugins.priors.mvdream_unet.MultiViewUNet` over the batch, in which the views'
self-attention spans all of them, and returns one D per view.

Batches. A condition for N views takes x of N*K images laid out as the estimators lay them out,
view-major (the K noise draws of view 0, then of view 1, ...): draw k of every view forms one
object of N views. Guidance is MVDream's ``uncond + s (cond - uncond)`` (eps prediction, SD 2.1
base's scaled-linear schedule), both branches in one UNet call, each branch grouped by object
as MVDream's pipeline and threestudio's guidance do; the VP->VE conversion and sigma snapping
are the stable-diffusion prior's (:mod:`sjc_plugins.priors._diffusion_common`), on the device.

Weights (:mod:`sjc_plugins.priors.mvdream_loading`): ashawkey's diffusers-layout folder or hub
id (``unet/`` in MVDream's ldm keys, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), or
MVDream's original single checkpoint (``checkpoint``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from sjc_plugins.priors._diffusion_common import VpLadder, batch_sigma, square_size
from sjc_plugins.priors._sd_placement import Placement, decode_latents
from sjc_plugins.priors.mvdream_cameras import camera_embedding
from sjc_plugins.priors.mvdream_options import MVDreamOptions
from sjc_plugins.priors.mvdream_unet import MultiViewUNet

from sjc_core.contracts import BuildContext, View
from sjc_core.render.cameras import look_at


@dataclass(frozen=True)
class MultiViewCondition:
    """Text embeddings [1, L, D] (conditional and unconditional, None without guidance) and the
    views' camera embeddings [N, 16] on the UNet's device (None: not bound to views yet)."""

    prompt: str
    embedding: torch.Tensor
    uncond: torch.Tensor | None
    cameras: torch.Tensor | None = None


class MVDreamPrior:
    """D(x; sigma) over SD 2.1 latents [N*K, 4, 32, 32] of N views (see the module docstring)."""

    value_range = None

    def __init__(
        self, unet: MultiViewUNet, vae: Any, text_encoder: Any, tokenizer: Any, ladder: VpLadder, options: MVDreamOptions,
        device: torch.device | str = "cpu",
    ) -> None:
        self.unet, self.vae, self.tokenizer, self.ladder, self.options = unet, vae, tokenizer, ladder, options
        self.device = torch.device(device)
        self.dtype = unet.dtype
        self.channels = int(unet.config.in_channels)
        self.resolution = square_size(unet.config.sample_size, "UNet")
        self.render_resolution = self.resolution  # the field renders latents at the UNet's size
        self.sigmas = ladder.sigmas.to(torch.float32)
        self.prediction_type = ladder.prediction_type
        self.guidance_scale = float(options.guidance_scale)
        self.views_per_step = int(options.views)
        self.placement = Placement(
            self.device, self.dtype, torch.contiguous_format, self.device, self.dtype,
            torch.device("cpu"), torch.device("cpu"), self.device,
        )
        prompt = options.prompt + options.prompt_suffix
        negative = _encode(text_encoder, tokenizer, options.negative_prompt, self.device, self.dtype)
        self._text = MultiViewCondition(
            prompt,
            _encode(text_encoder, tokenizer, prompt, self.device, self.dtype),
            negative if self.guidance_scale != 1.0 else None,
        )
        self._unconditional = MultiViewCondition(options.negative_prompt, negative, None)

    def condition(self, view: View | None) -> MultiViewCondition:
        """One view's condition (a batch of one object with one view)."""
        return self.condition_views([view if view is not None else View()])

    def condition_views(self, views: Sequence[View]) -> MultiViewCondition:
        """The prompt with the cameras of ``views`` (one per image of the batch; a view without a
        pose gets MVDream's front camera at elevation 0)."""
        return self.bind_views(self._text, views)

    def unconditional(self) -> MultiViewCondition:
        """The negative prompt, unguided, not yet bound to cameras (ISM binds it with :meth:`with_views_of`)."""
        return self._unconditional

    def with_views_of(self, cond: MultiViewCondition, like: MultiViewCondition) -> MultiViewCondition:
        """``cond``'s text with ``like``'s cameras (an estimator's inversion condition for this step's views)."""
        return replace(cond, cameras=like.cameras)

    def bind_views(self, cond: MultiViewCondition, views: Sequence[View]) -> MultiViewCondition:
        """``cond`` with the views' camera embeddings (made on the host, copied to the UNet's device)."""
        poses = [_pose(view) for view in views]
        cameras = camera_embedding(torch.stack(poses)).to(torch.float32)
        return replace(cond, cameras=cameras.to(self.device, non_blocking=self.device.type != "cpu"))

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: MultiViewCondition | None) -> torch.Tensor:
        """Snap sigma, run the (guided) multi-view UNet once, return D in x's dtype (no host sync)."""
        cond = cond if cond is not None else self.condition(None)
        cameras = cond.cameras if cond.cameras is not None else self.condition(None).cameras
        assert cameras is not None
        views, batch = cameras.shape[0], x.shape[0]
        if batch % views:
            raise ValueError(f"a batch of {batch} images for {views} views (must be a multiple)")
        draws = batch // views
        timesteps, snapped = self.ladder.snap(batch_sigma(sigma, batch, x.device))
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        x_in = VpLadder.network_input(x32, snapped).to(device=self.device, dtype=self.dtype)
        rest = tuple(x_in.shape[1:])
        objects = x_in.reshape(views, draws, *rest).transpose(0, 1).reshape(batch, *rest)  # draw-major: one object per draw
        t = timesteps.to(self.device).reshape(views, draws).transpose(0, 1).reshape(batch)
        cams = cameras.repeat(draws, 1)
        text = cond.embedding.expand(batch, -1, -1)
        if cond.uncond is None:
            prediction = self.unet(objects, t, text, cams, views).to(x32.dtype)
        else:
            both = self.unet(
                torch.cat([objects, objects]),
                torch.cat([t, t]),
                torch.cat([cond.uncond.expand(batch, -1, -1), text]),
                torch.cat([cams, cams]),
                views,
            ).to(x32.dtype)
            uncond, conditional = both.chunk(2)
            prediction = uncond + self.guidance_scale * (conditional - uncond)
        prediction = prediction.reshape(draws, views, *rest).transpose(0, 1).reshape(batch, *rest)
        return self.ladder.denoised(x32, snapped, prediction.to(x32.device)).to(x.dtype)

    @torch.no_grad()
    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Decode latents [B, 4, h, w] through the VAE to pictures in [0, 1], [B, 3, 8h, 8w]."""
        return decode_latents(self.vae, self.placement, x)


def _pose(view: View) -> torch.Tensor:
    if view.c2w is None:  # MVDream's azimuth 0, elevation 0: sjc's front camera, on -x
        return torch.from_numpy(look_at(np.array([-1.0, 0.0, 0.0])))
    return torch.as_tensor(view.c2w).detach().to("cpu", torch.float64).reshape(4, 4)


@torch.no_grad()
def _encode(text_encoder: Any, tokenizer: Any, text: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The text encoder's last hidden state (SD 2's penultimate OpenCLIP layer) [1, L, D]."""
    tokens = tokenizer([text], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    ids = tokens.input_ids.to(text_encoder.device)
    return text_encoder(ids)[0].to(device=device, dtype=dtype)


def build_mvdream(options: MVDreamOptions, ctx: BuildContext) -> MVDreamPrior:
    from sjc_plugins.priors.mvdream_loading import load_parts

    device = torch.device(ctx.device)
    unet, vae, text_encoder, tokenizer, ladder = load_parts(options, ctx, device)
    prior = MVDreamPrior(unet, vae, text_encoder, tokenizer, ladder, options, device)
    text_encoder.to("cpu")  # every prompt is encoded: it leaves the accelerator
    ladder.on(device)
    return prior
