"""Stable Diffusion parts from a single-file checkpoint (``prior.model = "x.safetensors"``).

The file's tensors make the UNet, VAE and text encoder (:mod:`sjc_plugins.priors.ldm_checkpoint`);
the tokenizer comes from sjc's shipped CLIP vocabulary (:mod:`sjc_plugins.priors.clip_vocab`) and
the scheduler from SD's shipped schedule. Nothing is downloaded. What was detected (v1/v2,
epsilon/v, the size) is said on stderr as the prior builds, since no file records it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sjc_plugins.priors._diffusion_common import quiet_loading
from sjc_plugins.priors.clip_vocab import clip_tokenizer
from sjc_plugins.priors.ldm_checkpoint import (
    LdmKind,
    build_scheduler,
    build_unet,
    build_vae,
    detect_kind,
    ldm_defaults,
    original_config,
    read_checkpoint,
)
from sjc_plugins.priors.ldm_text_encoder import build_text_encoder


@dataclass
class SdParts:
    """What the prior is assembled from, wherever it came from."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    description: str = ""


def load_single_file(
    path: Path, dtype: torch.dtype, model_kind: str = "auto", prediction: str = "auto", say: Any = None
) -> SdParts:
    """Every part of an ldm-layout SD 1.x/2.x checkpoint, offline: UNet and text encoder in ``dtype``,
    the VAE in float32. ``say`` gets the one-line description (default: stderr)."""
    checkpoint = read_checkpoint(path)
    kind = detect_kind(checkpoint.shapes, checkpoint.global_step, path, model_kind, prediction)
    config = original_config(checkpoint.shapes, kind)
    with quiet_loading():
        unet = build_unet(checkpoint, kind, config)
        vae = build_vae(checkpoint, kind, config)
        text_encoder = build_text_encoder(checkpoint, kind)
        if dtype != torch.float32:
            unet, text_encoder = unet.to(dtype), text_encoder.to(dtype)
    del checkpoint  # the converted modules hold their own copies
    tokenizer = clip_tokenizer(
        ldm_defaults()[kind.version]["tokenizer_pad"], text_encoder.config.max_position_embeddings
    )
    description = describe_loaded(path, kind, vae)
    (say or _stderr)(description)
    return SdParts(unet, vae, text_encoder, tokenizer, build_scheduler(kind), description)


def describe_loaded(path: Path, kind: LdmKind, vae: Any) -> str:
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    size = kind.latent_size * scale
    return f"sjc: note: prior.model '{Path(path).name}': {kind.describe()}, pictures {size}x{size}"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
