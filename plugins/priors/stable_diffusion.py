"""The Stable Diffusion prior: a text-conditioned latent denoiser in the VE convention.

Any diffusers-format Stable Diffusion folder or hub id works (SD 1.x, 2.x, a DreamBooth
fine-tune saved with ``save_pretrained``), and so does a single-file SD 1.x/2.x checkpoint,
with LoRA adapters on top (loading: :mod:`sjc_plugins.priors.sd_loading`). The
noise ladder comes from the scheduler's own ``alphas_cumprod``; epsilon, v and x0
predictions are read from its ``prediction_type``. Classifier-free guidance runs the
conditional and unconditional halves in one batched UNet call.

Memory and speed. :func:`assemble_stable_diffusion` places the parts as the diffusers
pipelines do on CUDA and keeps the accelerator for the UNet alone: the UNet in float16,
``channels_last``, with PyTorch's SDPA attention; every prompt a run can ask for (the
plain prompt, its four view variants, the negative prompt) is encoded once at build, after
which the text encoder leaves the device; the float32 VAE visits the device only while
``to_rgb`` decodes pictures. Recipe options add attention slicing, VAE tiling, a CPU
offload for small cards (text encoder and VAE on the CPU) and ``torch.compile``.
``denoise`` never waits for the host: sigma is snapped on the device.

Guidance. ``guidance_scale`` s mixes the branches as ``uncond + s (cond - uncond)`` (the SJC
reference, stable-dreamfusion, LucidDreamer, diffusers); ``guidance_convention =
"threestudio"`` reads s as threestudio does, ``cond + s (cond - uncond)``, which is the same
at s + 1. ISM (LucidDreamer) inverts with :meth:`StableDiffusionPrior.inverse_condition`
(``inverse_prompt``, unguided) and keeps the negative prompt for the guidance at t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sjc_core.contracts import BuildContext, View
from sjc_core.errors import SjcError
from sjc_core.render.cameras import LABEL_PROMPTS
from sjc_plugins.priors._diffusion_common import VpLadder, batch_sigma, square_size
from sjc_plugins.priors._sd_placement import (
    Placement,
    decode_latents,
    indexed_device,
    place,
    place_unet,
    plan_placement,
    return_cached_memory,
    set_attention_slicing,
)
from sjc_plugins.priors.perp_neg import PerpNegSettings, aggregate, view_mix
from sjc_plugins.priors.stable_diffusion_options import (  # noqa: F401 (re-exported: the options live there)
    DEFAULT_MODEL,
    MAX_PROMPT,
    SLICING_CHOICES,
    StableDiffusionOptions,
)


def sjc_guidance_scale(options: StableDiffusionOptions) -> float:
    """guidance_scale in sjc's convention: threestudio's cond + s (cond - uncond) is sjc's at s + 1."""
    scale = float(options.guidance_scale)
    return scale + 1.0 if options.guidance_convention == "threestudio" else scale


def ddim_steps_offset(scheduler: Any) -> int:
    """How far diffusers' DDIM timesteps, set to every training step, sit above the ladder index.

    ``DDIMScheduler.set_timesteps(num_train_timesteps)`` gives index + ``steps_offset`` with
    'leading' spacing (the default; SD 1.x/2.x: 1) and the index itself with 'linspace' or
    'trailing'. LucidDreamer indexes those timesteps, so its lowest level is timestep 1.
    """
    config = scheduler.config
    if config.get("timestep_spacing", "leading") != "leading":
        return 0
    return max(int(config.get("steps_offset", 0) or 0), 0)


@dataclass(frozen=True)
class TextCondition:
    """Text embeddings for one prompt: conditional [1, L, D] and unconditional (None without guidance)."""

    prompt: str
    embedding: torch.Tensor
    uncond: torch.Tensor | None


@dataclass(frozen=True)
class PerpNegCondition:
    """Perp-Neg's prompts for one camera: the positive mix and the negatives with their weights
    (:mod:`sjc_plugins.priors.perp_neg`), each [1, L, D], and the unconditional branch."""

    prompt: str
    embedding: torch.Tensor
    negatives: tuple[torch.Tensor, ...]
    weights: tuple[float, ...]
    uncond: torch.Tensor


class StableDiffusionPrior:
    """D(x; sigma) over SD latents [B, 4, 64, 64] (``resolution`` is the UNet's sample size).

    Build it with :func:`assemble_stable_diffusion` (or the registry), which places the parts
    and encodes every prompt; constructed directly, everything stays where it is.
    """

    value_range = None

    def __init__(
        self,
        unet: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        ladder: VpLadder,
        options: StableDiffusionOptions,
        placement: Placement | None = None,
        steps_offset: int = 0,
    ) -> None:
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.ladder = ladder
        self.options = options
        if placement is None:  # as given: every part stays where it is
            here, home = torch.device(unet.device), torch.device(vae.device)
            text = torch.device(text_encoder.device)
            placement = Placement(here, unet.dtype, torch.contiguous_format, text, text_encoder.dtype, text, home, home)
        self.placement = placement
        self.channels = int(unet.config.in_channels)
        self.resolution = square_size(unet.config.sample_size, "UNet")
        self.sigmas = ladder.sigmas.to(torch.float32)
        self.prediction_type = ladder.prediction_type
        self.guidance_scale = sjc_guidance_scale(options)  # s of uncond + s (cond - uncond), whatever the convention
        # diffusers' DDIM timesteps at every training step are ladder index + steps_offset:
        # ISM draws its levels through it, as LucidDreamer does.
        self.steps_offset = int(steps_offset)
        self.text_encoder_released = False
        self._cache: dict[str | None, TextCondition] = {}
        self._texts: dict[str, torch.Tensor] = {}  # embeddings of the negative and inverse prompts
        self._unconditional: TextCondition | None = None
        self._inverse: TextCondition | None = None

    @property
    def device(self) -> torch.device:
        return self.placement.device

    def prompt_for(self, label: str | None) -> str:
        """'front view of <prompt>' and so on, or the plain prompt for unlabelled views."""
        if label is None or not self.options.view_prompts:
            return self.options.prompt
        prefix = LABEL_PROMPTS.get(label)
        if prefix is None:
            raise ValueError(f"unknown view label {label!r} (known: {', '.join(LABEL_PROMPTS)})")
        return f"{prefix} {self.options.prompt}"

    def condition_keys(self) -> tuple[str | None, ...]:
        """Every key :meth:`condition` can be asked for: None (unlabelled) and, with view prompts, each label."""
        return (None, *LABEL_PROMPTS) if self.options.view_prompts else (None,)

    @torch.no_grad()
    def encode_text(self, text: str) -> torch.Tensor:
        """CLIP's last hidden state for one prompt, padded to the tokenizer's length: [1, L, D] on the UNet's device."""
        tokens = self.tokenizer(
            [text],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0].to(device=self.placement.device, dtype=self.placement.dtype)

    def encode_prompts(self) -> None:
        """Encode every prompt the run can ask for (each view's, the negative and the inverse one), once each."""
        for key in self.condition_keys():
            self._encode(key)
        self.unconditional()
        self.inverse_condition()

    def release_text_encoder(self) -> None:
        """Encode every prompt, then move the text encoder to its resting place (the CPU).

        Afterwards :meth:`condition` serves every label from the cache and the text encoder
        holds no accelerator memory. A no-op move when it already runs on the CPU.
        """
        self.encode_prompts()
        if self.placement.text_device != self.placement.text_home:
            self.text_encoder.to(self.placement.text_home)
            return_cached_memory(self.placement.text_device)
        self.text_encoder_released = True

    def _encode(self, key: str | None) -> TextCondition:
        cached = self._cache.get(key)
        if cached is None:
            prompt = self.prompt_for(key)
            uncond = self._negative_embedding() if self.guidance_scale != 1.0 else None
            cached = self._cache[key] = TextCondition(prompt, self.encode_text(prompt), uncond)
        return cached

    def unconditional(self) -> TextCondition:
        """The negative prompt alone, unguided (one UNet branch): ISM's inversion with
        ``inversion_condition = "unconditional"`` (sjc's before LucidDreamer's inverse prompt)."""
        if self._unconditional is None:
            self._unconditional = TextCondition(self.options.negative_prompt, self._negative_embedding(), None)
        return self._unconditional

    def inverse_condition(self) -> TextCondition:
        """The inverse prompt alone, unguided: what ISM inverts with and predicts x_s's noise
        from, as LucidDreamer does with its ``inverse_text`` (empty by default), while the
        negative prompt only enters the guidance at t."""
        if self._inverse is None:
            self._inverse = TextCondition(self.options.inverse_prompt, self._text(self.options.inverse_prompt), None)
        return self._inverse

    def _negative_embedding(self) -> torch.Tensor:
        return self._text(self.options.negative_prompt)

    def _text(self, text: str) -> torch.Tensor:
        """One encoding per distinct text (the negative and inverse prompts are often both empty)."""
        embedding = self._texts.get(text)
        if embedding is None:
            embedding = self._texts[text] = self.encode_text(text)
        return embedding

    def condition(self, view: View | None) -> TextCondition | PerpNegCondition:
        """The view's prompt (``front view of ...``), or with ``perp_neg`` and a known azimuth,
        Perp-Neg's mix of view prompts and its perpendicular negatives."""
        if self.options.perp_neg and view is not None and view.azimuth_deg is not None:
            return self._perp_neg(float(view.azimuth_deg))
        label = view.label if view is not None else None
        return self._encode(label if self.options.view_prompts else None)

    def _perp_neg(self, azimuth_deg: float) -> PerpNegCondition:
        options = self.options
        settings = PerpNegSettings(options.perp_neg_weight, options.perp_neg_front_decay, options.perp_neg_side_decay)
        positive, negatives = view_mix(azimuth_deg, settings)
        mix = sum(share * self._encode(label).embedding for label, share in positive.items())
        shown = " + ".join(f"{share:.2f} {label}" for label, share in positive.items())
        return PerpNegCondition(
            prompt=f"{shown} view of {options.prompt}",
            embedding=mix,
            negatives=tuple(self._encode(label).embedding for label, _ in negatives),
            weights=tuple(weight for _, weight in negatives),
            uncond=self._negative_embedding(),
        )

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: TextCondition | None) -> torch.Tensor:
        """Snap sigma to the ladder, run the (guided) UNet once, return D in x's dtype.

        Every step runs on the device, snapping included: nothing here reads a value back
        to the host, so a training step is never stalled by it. The arithmetic around the
        UNet is float32, or float64 for float64 x (reference comparisons at round-off).
        """
        cond = cond if cond is not None else self.condition(None)
        device, dtype = self.placement.device, self.placement.dtype
        batch = x.shape[0]
        timesteps, snapped = self.ladder.snap(batch_sigma(sigma, batch, x.device))
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        x_in = VpLadder.network_input(x32, snapped).to(device=device, dtype=dtype)
        t = timesteps.to(device)
        text = cond.embedding.expand(batch, -1, -1)
        if isinstance(cond, PerpNegCondition):
            prediction = self._perp_neg_prediction(x_in, t, cond, x32.dtype)
        elif cond.uncond is None:
            prediction = self.unet(x_in, t, encoder_hidden_states=text).sample.to(x32.dtype)
        else:
            both = self.unet(
                torch.cat([x_in, x_in]),
                torch.cat([t, t]),
                encoder_hidden_states=torch.cat([cond.uncond.expand(batch, -1, -1), text]),
            ).sample.to(x32.dtype)
            uncond, conditional = both.chunk(2)
            prediction = uncond + self.guidance_scale * (conditional - uncond)
        return self.ladder.denoised(x32, snapped, prediction.to(x32.device)).to(x.dtype)

    def _perp_neg_prediction(
        self, x_in: torch.Tensor, t: torch.Tensor, cond: PerpNegCondition, dtype: torch.dtype
    ) -> torch.Tensor:
        """One batched UNet call over the unconditional, positive and negative branches, combined
        by :func:`~sjc_plugins.priors.perp_neg.aggregate` in ``dtype``."""
        batch = x_in.shape[0]
        texts = (cond.uncond, cond.embedding, *cond.negatives)
        out = self.unet(
            torch.cat([x_in] * len(texts)),
            torch.cat([t] * len(texts)),
            encoder_hidden_states=torch.cat([text.expand(batch, -1, -1) for text in texts]),
        ).sample.to(dtype)
        uncond, *branches = out.chunk(len(texts))
        return aggregate(uncond, branches, list(cond.weights), self.guidance_scale)

    @torch.no_grad()
    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Decode latents [B, 4, h, w] through the VAE to pictures in [0, 1], [B, 3, 8h, 8w].

        The VAE's decoder visits ``placement.decode_device`` for the call and goes back to
        ``placement.vae_home`` afterwards (also on errors); latents go in chunks of
        ``DECODE_CHUNK``, tile by tile with ``vae_tiling``.
        """
        return decode_latents(self.vae, self.placement, x)


def assemble_stable_diffusion(
    unet: Any,
    vae: Any,
    text_encoder: Any,
    tokenizer: Any,
    scheduler: Any,
    options: StableDiffusionOptions,
    device: torch.device | str,
) -> StableDiffusionPrior:
    """Place loaded (or freshly built) SD parts for scoring on ``device`` and wrap them as a prior.

    The UNet goes to ``device`` in ``options.dtype`` (auto: float16 on CUDA), channels_last on
    CUDA, SDPA attention, then the memory options (``attention_slicing``, ``vae_tiling``) and
    ``compile``; the VAE goes to the CPU in float32 and visits ``device`` only to decode
    (``cpu_offload``: never); the text encoder encodes every prompt on ``device`` (CPU with
    ``cpu_offload``) and then moves to the CPU. Every part ends in eval mode without grads.
    ``scheduler`` gives the noise ladder and the prediction type.
    """
    device = indexed_device(device)
    ladder = VpLadder.from_scheduler(scheduler, options.model)
    if text_encoder.config.hidden_size != unet.config.cross_attention_dim:
        raise SjcError(
            f"prior.model: text encoder width {text_encoder.config.hidden_size} does not match the UNet's "
            f"cross_attention_dim {unet.config.cross_attention_dim} in '{options.model}'"
        )
    plan = plan_placement(options, device)

    place_unet(unet, plan)
    set_attention_slicing(unet, options.attention_slicing)
    if options.compile:
        unet.compile()  # in place: the module keeps its type, attributes and config

    # The VAE stays in float32: SD's VAE overflows in float16 on some images, and it only
    # runs for pictures, never in the scoring loop.
    place(vae, plan.vae_home, torch.float32).eval().requires_grad_(False)
    if options.vae_tiling:
        vae.enable_tiling()
    place(text_encoder, plan.text_device, plan.text_dtype).eval().requires_grad_(False)

    prior = StableDiffusionPrior(
        unet, vae, text_encoder, tokenizer, ladder, options, placement=plan, steps_offset=ddim_steps_offset(scheduler)
    )
    prior.release_text_encoder()  # encodes the prompts first
    ladder.on(plan.device)  # the ladder's device copy, made now rather than in the first step
    return prior


def build_stable_diffusion(options: StableDiffusionOptions, ctx: BuildContext) -> StableDiffusionPrior:
    """The prior from a hub id, a diffusers folder or a single-file checkpoint (with LoRA)."""
    from sjc_plugins.priors.sd_loading import load_sd_parts

    parts = load_sd_parts(options, ctx)
    return assemble_stable_diffusion(
        parts.unet, parts.vae, parts.text_encoder, parts.tokenizer, parts.scheduler, options, torch.device(ctx.device)
    )
