"""The Stable Diffusion prior: a text-conditioned latent denoiser in the VE convention.

Any diffusers-format Stable Diffusion folder or hub id works (SD 1.x, 2.x, a DreamBooth
fine-tune saved with ``save_pretrained``): the UNet, VAE, CLIP text encoder, tokenizer and
scheduler config are loaded one by one with ``from_pretrained`` (no safety checker). The
noise ladder comes from the scheduler's own ``alphas_cumprod``; epsilon, v and x0
predictions are read from its ``prediction_type``. Classifier-free guidance runs the
conditional and unconditional halves in one batched UNet call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field

from sjc_core.cameras import LABEL_PROMPTS
from sjc_core.contracts import BuildContext, View
from sjc_core.errors import SjcError
from sjc_core.hookspecs import hookimpl
from sjc_plugins.priors._diffusion_common import (
    HubOptions,
    VpLadder,
    batch_sigma,
    load_pretrained,
    load_scheduler,
    resolve_dtype,
    resolve_source,
    square_size,
)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DECODE_CHUNK = 4  # latents decoded per VAE call; bounds the decoder's activation memory


class StableDiffusionOptions(HubOptions):
    model: str = Field(DEFAULT_MODEL, min_length=1, description="hub id or local diffusers Stable Diffusion folder")
    prompt: str = Field(..., min_length=1, description="text prompt of the object")
    negative_prompt: str = Field("", description="prompt of the unconditional branch of guidance")
    guidance_scale: float = Field(100.0, ge=1.0, description="classifier-free guidance scale (1 = no guidance)")
    view_prompts: bool = Field(True, description="prefix the prompt with the camera's view ('front view of ...')")


@dataclass(frozen=True)
class TextCondition:
    """Text embeddings for one prompt: conditional [1, L, D] and unconditional (None without guidance)."""

    prompt: str
    embedding: torch.Tensor
    uncond: torch.Tensor | None


class StableDiffusionPrior:
    """D(x; sigma) over SD latents [B, 4, 64, 64] (``resolution`` is the UNet's sample size)."""

    value_range = None

    def __init__(
        self,
        unet: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        ladder: VpLadder,
        options: StableDiffusionOptions,
    ) -> None:
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.ladder = ladder
        self.options = options
        self.channels = int(unet.config.in_channels)
        self.resolution = square_size(unet.config.sample_size, "UNet")
        self.sigmas = ladder.sigmas.to(torch.float32)
        self.prediction_type = ladder.prediction_type
        self.guidance_scale = float(options.guidance_scale)
        self._cache: dict[str | None, TextCondition] = {}
        self._uncond: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def prompt_for(self, label: str | None) -> str:
        """'front view of <prompt>' and so on, or the plain prompt for unlabelled views."""
        if label is None or not self.options.view_prompts:
            return self.options.prompt
        prefix = LABEL_PROMPTS.get(label)
        if prefix is None:
            raise ValueError(f"unknown view label {label!r} (known: {', '.join(LABEL_PROMPTS)})")
        return f"{prefix} {self.options.prompt}"

    @torch.no_grad()
    def encode_text(self, text: str) -> torch.Tensor:
        """CLIP's last hidden state for one prompt, padded to the tokenizer's length: [1, L, D]."""
        tokens = self.tokenizer(
            [text],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0].to(self.unet.dtype)

    def condition(self, view: View | None) -> TextCondition:
        label = view.label if view is not None else None
        key = label if self.options.view_prompts else None
        if key not in self._cache:
            prompt = self.prompt_for(key)
            uncond = None
            if self.guidance_scale != 1.0:
                if self._uncond is None:
                    self._uncond = self.encode_text(self.options.negative_prompt)
                uncond = self._uncond
            self._cache[key] = TextCondition(prompt, self.encode_text(prompt), uncond)
        return self._cache[key]

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: TextCondition | None) -> torch.Tensor:
        """Snap sigma to the ladder, run the (guided) UNet once, return D in x's dtype."""
        cond = cond if cond is not None else self.condition(None)
        batch = x.shape[0]
        timesteps, snapped = self.ladder.snap(batch_sigma(sigma, batch))
        x32 = x.float()
        x_in = VpLadder.network_input(x32, snapped).to(self.unet.dtype)
        t = timesteps.to(self.unet.device)
        text = cond.embedding.expand(batch, -1, -1)
        if cond.uncond is None:
            prediction = self.unet(x_in, t, encoder_hidden_states=text).sample.float()
        else:
            both = self.unet(
                torch.cat([x_in, x_in]),
                torch.cat([t, t]),
                encoder_hidden_states=torch.cat([cond.uncond.expand(batch, -1, -1), text]),
            ).sample.float()
            uncond, conditional = both.chunk(2)
            prediction = uncond + self.guidance_scale * (conditional - uncond)
        return self.ladder.denoised(x32, snapped, prediction).to(x.dtype)

    @torch.no_grad()
    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Decode latents [B, 4, h, w] through the VAE to pictures in [0, 1], [B, 3, 8h, 8w]."""
        config = self.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        pictures = []
        for chunk in x.split(DECODE_CHUNK):
            latents = chunk.to(device=self.vae.device, dtype=self.vae.dtype) / config.scaling_factor + shift
            decoded = self.vae.decode(latents).sample.float()
            pictures.append(((decoded + 1) / 2).clamp(0, 1))
        return torch.cat(pictures).to(x.device)


def build_stable_diffusion(options: StableDiffusionOptions, ctx: BuildContext) -> StableDiffusionPrior:
    source = resolve_source(options, ctx, probes=("unet/config.json",))
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    device = torch.device(ctx.device)
    dtype = resolve_dtype(options.dtype, device)
    scheduler = load_scheduler(source, "scheduler")
    ladder = VpLadder.from_scheduler(scheduler, source.ref)
    unet = load_pretrained(UNet2DConditionModel, source, "unet", "UNet", torch_dtype=dtype)
    # The VAE stays in float32: SD's VAE overflows in float16 on some images, and it only
    # runs for pictures, never in the scoring loop.
    vae = load_pretrained(AutoencoderKL, source, "vae", "VAE", torch_dtype=torch.float32)
    text_encoder = load_pretrained(CLIPTextModel, source, "text_encoder", "text encoder", dtype=dtype)
    tokenizer = load_pretrained(CLIPTokenizer, source, "tokenizer", "tokenizer", weights=False)
    if text_encoder.config.hidden_size != unet.config.cross_attention_dim:
        raise SjcError(
            f"prior.model: text encoder width {text_encoder.config.hidden_size} does not match the UNet's "
            f"cross_attention_dim {unet.config.cross_attention_dim} in '{source.ref}'"
        )
    for module in (unet, vae, text_encoder):
        module.to(device).eval().requires_grad_(False)
    return StableDiffusionPrior(unet, vae, text_encoder, tokenizer, ladder, options)


@hookimpl
def register_priors(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="stable-diffusion",
        factory=build_stable_diffusion,
        description="Stable Diffusion (diffusers format, hub id or folder) as a text-conditioned latent prior",
        options=StableDiffusionOptions,
    )
