"""Where the parts of a Stable Diffusion pipeline live on an accelerator, and how they move.

The accelerator holds what the scoring loop runs, the UNet; the text encoder and the VAE
visit it only while they have work (prompts at build, pictures in ``to_rgb``). Split out of
:mod:`sjc_plugins.priors.stable_diffusion`, which wraps the parts as a prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sjc_core.errors import SjcError
from sjc_plugins.priors._diffusion_common import first_line, quiet_loading, resolve_dtype

HOST = torch.device("cpu")


@dataclass(frozen=True)
class Placement:
    """Where each part of the pipeline lives and runs; :func:`plan_placement` decides.

    ``device``/``dtype``/``memory_format``: the UNet, i.e. the scoring loop (and the cached
    text embeddings). The text encoder runs on ``text_device`` in ``text_dtype`` while the
    prompts are encoded at build, then rests on ``text_home``. The VAE (float32) rests on
    ``vae_home`` and decodes on ``decode_device``, visiting it only for ``to_rgb``.
    """

    device: torch.device
    dtype: torch.dtype
    memory_format: torch.memory_format
    text_device: torch.device
    text_dtype: torch.dtype
    text_home: torch.device
    vae_home: torch.device
    decode_device: torch.device


def unet_memory_format(device: torch.device | str) -> torch.memory_format:
    """channels_last on CUDA (cuDNN's tensor-core convolutions run NHWC natively); the usual layout elsewhere."""
    return torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format


def plan_placement(options: Any, device: torch.device | str) -> Placement:
    """The accelerator holds the UNet only; the other parts visit it when they have work.

    On the CPU nothing moves. With ``cpu_offload`` the text encoder and the VAE never touch
    the accelerator, and the text encoder runs in float32 there (the CPU's fast precision).
    """
    device = torch.device(device)
    dtype = resolve_dtype(options.dtype, device)
    offload = options.cpu_offload and device.type != "cpu"
    return Placement(
        device=device,
        dtype=dtype,
        memory_format=unet_memory_format(device),
        text_device=HOST if offload else device,
        text_dtype=torch.float32 if offload else dtype,
        text_home=HOST,
        vae_home=HOST,
        decode_device=HOST if offload else device,
    )


def indexed_device(device: torch.device | str) -> torch.device:
    """``cuda`` names the current card (``cuda:N``), so the plan and every part agree on one device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def place_unet(unet: Any, plan: Placement) -> None:
    """The UNet on the plan's device, dtype and memory layout, frozen, with SDPA attention."""
    place(unet, plan.device, plan.dtype)
    if plan.memory_format is not torch.contiguous_format:
        unet.to(memory_format=plan.memory_format)
    unet.eval().requires_grad_(False)
    use_sdpa_attention(unet)


def use_sdpa_attention(unet: Any) -> int:
    """Set PyTorch's scaled_dot_product_attention (diffusers' AttnProcessor2_0) on every plain attention layer.

    diffusers picks it by default on torch 2; setting it explicitly pins the fast kernel
    (flash or memory-efficient attention on CUDA) whatever the model was saved with.
    Special processors (added key/value projections, adapters) are left as they are.
    Returns the number of layers set.
    """
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    sdpa = AttnProcessor2_0()
    current = unet.attn_processors
    chosen = {name: sdpa if isinstance(p, (AttnProcessor, AttnProcessor2_0)) else p for name, p in current.items()}
    if chosen:
        unet.set_attn_processor(chosen)
    return sum(p is sdpa for p in chosen.values())


def set_attention_slicing(unet: Any, slicing: bool | str | int) -> None:
    """``unet.set_attention_slice`` for the ``attention_slicing`` option (False: leave SDPA)."""
    if slicing is False:
        return
    size = "auto" if slicing is True else slicing
    if isinstance(size, int):
        heads = [getattr(m, "sliceable_head_dim", None) for m in unet.modules()]
        heads = [h for h in heads if isinstance(h, int)]
        if heads and size > min(heads):
            raise SjcError(
                f"prior.attention_slicing: {size} heads per slice is more than the {min(heads)} heads of the "
                f"UNet's smallest attention layer; use at most {min(heads)}, 'auto' or 'max'"
            )
    try:
        unet.set_attention_slice(size)
    except ValueError as exc:
        raise SjcError(f"prior.attention_slicing: {first_line(exc)}") from None


def decoder_parts(vae: Any) -> list[torch.nn.Module]:
    """What ``vae.decode`` runs (post_quant_conv and decoder): the encoder half never travels."""
    decoder = getattr(vae, "decoder", None)
    if not isinstance(decoder, torch.nn.Module):
        return [vae]
    post_quant = getattr(vae, "post_quant_conv", None)
    return [post_quant, decoder] if isinstance(post_quant, torch.nn.Module) else [decoder]


DECODE_CHUNK = 4  # latents decoded per VAE call; bounds the decoder's activation memory


def decode_latents(vae: Any, placement: Placement, x: torch.Tensor) -> torch.Tensor:
    """Latents [B, 4, h, w] through the VAE to pictures in [0, 1], [B, 3, 8h, 8w], on x's device.

    The VAE's decoder visits ``placement.decode_device`` for the call and goes back to
    ``placement.vae_home`` afterwards (also on errors); latents go in chunks of
    ``DECODE_CHUNK`` (tile by tile when the VAE has tiling on).
    """
    config = vae.config
    shift = getattr(config, "shift_factor", None) or 0.0
    where, home = placement.decode_device, placement.vae_home
    parts = decoder_parts(vae) if where != home else []
    pictures = []
    try:
        for part in parts:
            part.to(where)
        for chunk in x.split(DECODE_CHUNK):
            latents = chunk.to(device=where, dtype=vae.dtype) / config.scaling_factor + shift
            decoded = vae.decode(latents).sample.float()
            pictures.append(((decoded + 1) / 2).clamp(0, 1))
    finally:
        for part in parts:
            part.to(home)
    return torch.cat(pictures).to(x.device)


def place(module: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """``module.to(device)``, cast only when the dtype differs (and without diffusers' cast warning)."""
    module.to(device)
    if module.dtype != dtype:
        with quiet_loading(hide_bars=False):
            module.to(dtype)
    return module


def return_cached_memory(device: torch.device) -> None:
    """Give freed accelerator memory back to the driver (once, at build: not on a hot path)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
