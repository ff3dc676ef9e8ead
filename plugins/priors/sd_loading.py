"""Where a Stable Diffusion prior's parts come from: a diffusers folder or hub id (one
``from_pretrained`` per part), or a single-file checkpoint (:mod:`sjc_plugins.priors.single_file`);
then the recipe's ``prediction`` override and its LoRA adapters (:mod:`sjc_plugins.priors.lora`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sjc_core.contracts import BuildContext
from sjc_plugins.priors._diffusion_common import (
    VpLadder,
    load_pretrained,
    load_scheduler,
    resolve_dtype,
    resolve_for_loading,
)
from sjc_plugins.priors.single_file import SdParts, load_single_file
from sjc_plugins.priors.stable_diffusion_options import StableDiffusionOptions


def load_folder(source: Any, dtype: torch.dtype) -> SdParts:
    """The parts of a diffusers folder or cached hub model, loaded one by one (no safety checker)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    scheduler = load_scheduler(source, "scheduler")
    VpLadder.from_scheduler(scheduler, source.ref)  # an unusable schedule fails before gigabytes load
    unet = load_pretrained(UNet2DConditionModel, source, "unet", "UNet", torch_dtype=dtype)
    vae = load_pretrained(AutoencoderKL, source, "vae", "VAE", torch_dtype=torch.float32)
    text_encoder = load_pretrained(CLIPTextModel, source, "text_encoder", "text encoder", dtype=dtype)
    tokenizer = load_pretrained(CLIPTokenizer, source, "tokenizer", "tokenizer", weights=False)
    return SdParts(unet, vae, text_encoder, tokenizer, scheduler)


def with_prediction(scheduler: Any, prediction: str) -> Any:
    """The scheduler with the recipe's prediction type, or as it is for ``auto``."""
    if prediction == "auto" or scheduler.config.get("prediction_type") == prediction:
        return scheduler
    return type(scheduler).from_config(scheduler.config, prediction_type=prediction)


def load_sd_parts(options: StableDiffusionOptions, ctx: BuildContext) -> SdParts:
    """Resolve ``options.model``, load its parts in the run's precision, apply the overrides and LoRA."""
    source = resolve_for_loading(options, ctx, probes=("unet/config.json",))
    dtype = resolve_dtype(options.dtype, torch.device(ctx.device))
    if source.single_file:
        parts = load_single_file(Path(source.ref), dtype, options.model_kind, options.prediction)
    else:
        parts = load_folder(source, dtype)
        parts.scheduler = with_prediction(parts.scheduler, options.prediction)
    if options.lora:
        from sjc_plugins.priors.lora import apply_loras

        apply_loras(parts.unet, parts.text_encoder, options.lora, ctx)
    return parts
