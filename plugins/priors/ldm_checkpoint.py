"""Single-file (CompVis/ldm layout) Stable Diffusion checkpoints: reading them safely, telling
what they are from their tensors, and converting them to diffusers modules -- all offline.

A ``.safetensors`` file is read with safetensors; a ``.ckpt`` only with
``torch.load(weights_only=True)``, so a pickle that needs anything but tensors and plain
containers is refused. Nothing is fetched: the choices the tensors do not show (attention
heads, text-encoder activation, image size, the noise schedule) come from sjc's own
``configs/ldm_sd.json``; every shape (channels, levels, layers, widths) comes from the file,
so a tiny test checkpoint loads through the same code as a real one. The key conversion is
diffusers' own (``diffusers.loaders.single_file_utils``), fed an ldm config built here.

Reused by the other priors that load ldm UNets (MVDream): :func:`read_checkpoint`,
:func:`detect_kind`, :func:`build_unet`, :func:`build_vae`; the text encoders are in
:mod:`sjc_plugins.priors.ldm_text_encoder`.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from sjc_core.errors import SjcError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: OpenAI CLIP ViT-L/14 (transformers layout)
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP ViT-H/14 (open_clip layout)
CONFIG_FILE = Path(__file__).with_name("configs") / "ldm_sd.json"

Shapes = Mapping[str, tuple[int, ...]]


@lru_cache(maxsize=1)
def ldm_defaults() -> dict[str, Any]:
    """The shipped choices of the original ldm configs (``configs/ldm_sd.json``)."""
    return json.loads(CONFIG_FILE.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class LdmFile:
    """A checkpoint's tensors (ldm key names) and the training step a ``.ckpt`` records."""

    path: Path
    tensors: dict[str, torch.Tensor]
    global_step: int | None

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: tuple(value.shape) for key, value in self.tensors.items()}


def check_suffix(path: Path, field: str = "prior.model") -> None:
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise SjcError(
            f"{field}: '{path}' is a file of unknown type '{path.suffix}'; a single-file checkpoint "
            f"ends in {' or '.join(SINGLE_FILE_SUFFIXES)} (or give a diffusers folder)"
        )


def _load_pickle(path: Path, field: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SjcError(
            f"{field}: '{path}' holds objects other than tensors; sjc loads .ckpt files with weights_only=True "
            "and never runs a pickle's code (convert it to .safetensors where you trust it)"
        ) from None
    except Exception as exc:  # a truncated file, not a zip/pickle at all, ...
        raise SjcError(f"{field}: cannot read '{path}' as a torch checkpoint: {_first_line(exc)}") from None


def read_checkpoint(path: Path | str, field: str = "prior.model") -> LdmFile:
    """Every tensor of a ``.safetensors`` or ``.ckpt`` file (a ``state_dict`` entry unwrapped)."""
    path = Path(path)
    check_suffix(path, field)
    global_step = None
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as exc:
            raise SjcError(f"{field}: cannot read '{path}' as safetensors: {_first_line(exc)}") from None
    else:
        loaded = _load_pickle(path, field)
        if not isinstance(loaded, dict):
            raise SjcError(f"{field}: '{path}' holds a {type(loaded).__name__}, not a dictionary of tensors")
        step = loaded.get("global_step")
        global_step = int(step) if isinstance(step, int) else None
        inner = loaded.get("state_dict")
        tensors = inner if isinstance(inner, dict) else loaded
        tensors = {k: v for k, v in tensors.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return LdmFile(path, tensors, global_step)


def read_shapes(path: Path | str, field: str = "model") -> tuple[dict[str, tuple[int, ...]], int | None]:
    """Tensor shapes (and a .ckpt's global_step) without loading a .safetensors file's data."""
    path = Path(path)
    check_suffix(path, field)
    if path.suffix.lower() != ".safetensors":
        found = read_checkpoint(path, field)
        return found.shapes, found.global_step
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())  # a safetensors handle is no dict
            return {key: tuple(handle.get_slice(key).get_shape()) for key in keys}, None
    except Exception as exc:
        raise SjcError(f"{field}: cannot read '{path}' as safetensors: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


# -- What the file is --------------------------------------------------------------------------


@dataclass(frozen=True)
class LdmKind:
    """What a checkpoint is: SD ``v1``/``v2``, its prediction, latent size, and why we think so."""

    version: str
    prediction: str
    latent_size: int
    context_dim: int
    text_encoder: str  # "clip", "open_clip" or "none"
    reason: str  # why this version
    prediction_reason: str  # why this prediction

    def describe(self) -> str:
        return (
            f"Stable Diffusion {self.version} (from the {self.reason}), {self.prediction} "
            f"({self.prediction_reason}), latents {self.latent_size}x{self.latent_size}, context {self.context_dim}"
        )


def _context_dim(shapes: Shapes) -> int | None:
    for key, shape in shapes.items():
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return int(shape[1])
    return None


def text_encoder_layout(shapes: Shapes) -> str:
    if any(key.startswith(OPEN_CLIP_PREFIX) for key in shapes):
        return "open_clip"
    if any(key.startswith(CLIP_PREFIX) for key in shapes):
        return "clip"
    return "none"


def is_ldm_sd(shapes: Shapes) -> bool:
    return any(key.startswith(UNET_PREFIX) for key in shapes) and _context_dim(shapes) is not None


def detect_kind(
    shapes: Shapes, global_step: int | None, path: Path | str, model_kind: str = "auto", prediction: str = "auto"
) -> LdmKind:
    """v1 or v2 from the text encoder's layout (else the context width, 768 or 1024); eps or v
    by the documented rule of ``configs/ldm_sd.json`` (the file itself does not say); either
    overridden by the recipe's ``model_kind`` / ``prediction``."""
    context = _context_dim(shapes)
    if not any(key.startswith(UNET_PREFIX) for key in shapes) or context is None:
        raise SjcError(
            f"prior.model: '{path}' is not a Stable Diffusion checkpoint in the ldm layout "
            f"(no cross-attention UNet keys '{UNET_PREFIX}...attn2.to_k.weight')"
        )
    conv_in = shapes.get(f"{UNET_PREFIX}input_blocks.0.0.weight", ())
    if any(key.startswith("conditioner.") for key in shapes) or (len(conv_in) == 4 and conv_in[1] != 4):
        what = "an SDXL" if any(key.startswith("conditioner.") for key in shapes) else "an inpainting or other"
        raise SjcError(
            f"prior.model: '{path}' is {what} checkpoint (UNet input {conv_in[1:2]}); sjc loads "
            "single-file SD 1.x/2.x text-to-image checkpoints (4 latent channels)"
        )
    layout = text_encoder_layout(shapes)
    if model_kind != "auto":
        version, reason = model_kind, "recipe's prior.model_kind"
    elif layout != "none":
        version = "v2" if layout == "open_clip" else "v1"
        reason = "OpenCLIP text encoder keys" if layout == "open_clip" else "CLIP text encoder keys"
    elif context in (768, 1024):
        version, reason = ("v1", "context width 768") if context == 768 else ("v2", "context width 1024")
    else:
        raise SjcError(
            f"prior.model: cannot tell whether '{path}' is SD v1 or v2 (no text encoder, context width "
            f'{context}); set prior.model_kind = "v1" or "v2"'
        )
    rules = ldm_defaults()[version]
    base = version == "v2" and global_step == rules.get("base_global_step")
    if prediction != "auto":
        chosen, why = prediction, "set by prior.prediction"
    elif base:
        chosen, why = rules["base_prediction"], f"global_step {global_step}: the SD 2-base release"
    else:
        chosen, why = rules["prediction"], f"the {version} rule; prior.prediction overrides"
    latent = rules.get("base_latent_size", rules["latent_size"]) if chosen == "epsilon" else rules["latent_size"]
    return LdmKind(version, chosen, int(latent), context, layout, reason, why)


# -- Building the diffusers modules ------------------------------------------------------------


def strip_prefix(shapes: Shapes, prefix: str) -> dict[str, tuple[int, ...]]:
    return {key[len(prefix) :]: shape for key, shape in shapes.items() if key.startswith(prefix)}


def block_indices(shapes: Shapes, pattern: str) -> list[int]:
    found = {int(m.group(1)) for key in shapes if (m := re.match(pattern, key))}
    return sorted(found)


def vae_ddconfig(shapes: Shapes) -> dict[str, Any]:
    """The ldm VAE's ``ddconfig`` read from its tensors."""
    vae = strip_prefix(shapes, VAE_PREFIX)
    ch, in_channels = vae["encoder.conv_in.weight"][:2]
    levels = block_indices(vae, r"encoder\.down\.(\d+)\.")
    ch_mult = [vae[f"encoder.down.{i}.block.0.conv2.weight"][0] // ch for i in levels]
    blocks = block_indices(vae, r"encoder\.down\.0\.block\.(\d+)\.")
    return {
        "ch": ch,
        "ch_mult": ch_mult,
        "num_res_blocks": len(blocks),
        "z_channels": vae["decoder.conv_in.weight"][1],
        "in_channels": in_channels,
        "out_ch": vae["decoder.conv_out.weight"][0],
    }


def unet_params(shapes: Shapes, kind: LdmKind) -> dict[str, Any]:
    """The ldm UNet's ``unet_config.params`` read from its tensors (heads from the shipped rules)."""
    unet = strip_prefix(shapes, UNET_PREFIX)
    model_channels, in_channels = unet["input_blocks.0.0.weight"][:2]
    levels: list[int] = []
    resnets = [0]
    attention_levels: set[int] = set()
    depth = 1
    for i in block_indices(unet, r"input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{i}.0.op.weight" in unet:  # a downsampler ends the level
            resnets.append(0)
            continue
        level = len(resnets) - 1
        if len(levels) == level:
            levels.append(unet[f"input_blocks.{i}.0.out_layers.3.weight"][0])
        resnets[level] += 1
        if f"input_blocks.{i}.1.proj_in.weight" in unet:
            attention_levels.add(level)
            depth = len(block_indices(unet, rf"input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\."))
    if len(set(resnets)) != 1:
        raise SjcError(f"prior.model: the UNet's levels have different numbers of res blocks ({resnets})")
    rules = ldm_defaults()[kind.version]
    heads: int | list[int] = rules["unet_num_heads"] or [max(1, c // rules["unet_head_channels"]) for c in levels]
    linear = any(len(s) == 2 for k, s in unet.items() if k.endswith("proj_in.weight"))
    return {
        "in_channels": in_channels,
        "out_channels": unet["out.2.weight"][0],
        "model_channels": model_channels,
        "channel_mult": [c // model_channels for c in levels],
        "attention_resolutions": [2**level for level in sorted(attention_levels)],
        "num_res_blocks": resnets[0],
        "transformer_depth": depth,
        "context_dim": kind.context_dim,
        "num_heads": heads,
        "use_linear_in_transformer": linear,
    }


def original_config(shapes: Shapes, kind: LdmKind) -> dict[str, Any]:
    """An ldm ``original_config`` as diffusers' converters read it, built here (no YAML download)."""
    params = {
        "unet_config": {"params": unet_params(shapes, kind)},
        "first_stage_config": {"params": {"ddconfig": vae_ddconfig(shapes)}},
        "scale_factor": ldm_defaults()["vae"]["scaling_factor"],
    }
    return {"model": {"params": params}}


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    """Every parameter from the file, or one line naming what is missing or left over."""
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    extra = sorted(set(state) - expected)
    if missing or extra:
        detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise SjcError(
            f"prior.model: the {what} in '{path}' does not match its ldm layout "
            f"({len(missing)} missing, {len(extra)} unexpected keys; {detail})"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SjcError(f"prior.model: cannot load the {what} from '{path}': {_first_line(exc)}") from None


def build_unet(checkpoint: LdmFile, kind: LdmKind, config: dict[str, Any] | None = None) -> Any:
    """A ``UNet2DConditionModel`` with the file's weights (float32)."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import single_file_utils as convert

    config = config or original_config(checkpoint.shapes, kind)
    unet_config = convert.create_unet_diffusers_config_from_ldm(config, checkpoint.tensors)
    unet_config["sample_size"] = kind.latent_size
    unet_config["norm_num_groups"] = ldm_defaults()["unet"]["norm_num_groups"]
    unet = UNet2DConditionModel(**unet_config)
    load_strict(
        unet, convert.convert_ldm_unet_checkpoint(checkpoint.tensors, unet_config), "UNet", checkpoint.path
    )
    return unet


def build_vae(checkpoint: LdmFile, kind: LdmKind, config: dict[str, Any] | None = None) -> Any:
    """An ``AutoencoderKL`` with the file's weights (float32, SD's scaling factor)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders import single_file_utils as convert

    config = config or original_config(checkpoint.shapes, kind)
    defaults = ldm_defaults()["vae"]
    scaling = defaults["scaling_factor"]
    vae_config = convert.create_vae_diffusers_config_from_ldm(config, checkpoint.tensors, scaling_factor=scaling)
    scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    vae_config["sample_size"] = kind.latent_size * scale
    vae_config["norm_num_groups"] = defaults["norm_num_groups"]
    vae = AutoencoderKL(**vae_config)
    load_strict(vae, convert.convert_ldm_vae_checkpoint(checkpoint.tensors, vae_config), "VAE", checkpoint.path)
    return vae


def build_scheduler(kind: LdmKind) -> Any:
    """SD's DDIM schedule (scaled-linear betas 0.00085..0.012, 1000 steps) with the kind's prediction."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**ldm_defaults()["scheduler"], prediction_type=kind.prediction)


def parameter_count(shapes: Shapes, prefix: str) -> int:
    return sum(math.prod(shape) for key, shape in shapes.items() if key.startswith(prefix))
