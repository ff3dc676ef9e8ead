"""What a Stable Diffusion model file or folder is, from its headers and configs alone
(``sjc prior-info``): nothing is built, no weights are converted, nothing runs.

A ``.safetensors`` file is read from its header (shapes only); a ``.ckpt`` is loaded with
``weights_only=True`` (its tensors must be read to know their shapes). A diffusers folder is
read from ``unet/config.json``, ``scheduler/scheduler_config.json`` and its safetensors headers.
Files that are not Stable Diffusion go to the guided-diffusion (ADM) describer when that
module is installed (``sjc_plugins.priors.adm_checkpoint.describe``).
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any

from sjc_core.errors import SjcError
from sjc_plugins.priors.ldm_checkpoint import (
    CLIP_PREFIX,
    OPEN_CLIP_PREFIX,
    SINGLE_FILE_SUFFIXES,
    UNET_PREFIX,
    VAE_PREFIX,
    detect_kind,
    is_ldm_sd,
    parameter_count,
    read_shapes,
    unet_params,
    vae_ddconfig,
)

TEXT_ENCODERS = {
    "clip": "OpenAI CLIP text model (SD 1.x: ViT-L/14)",
    "open_clip": "OpenCLIP text tower (SD 2.x: ViT-H/14), penultimate layer",
    "none": "none in the file",
}


def describe_model(path: Path) -> dict[str, Any] | None:
    """A description (ordered fields), or None when ``path`` is no Stable Diffusion model."""
    path = Path(path)
    if path.is_dir():
        return describe_folder(path) if (path / "unet" / "config.json").is_file() else None
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        return _other_describer(path)
    shapes, global_step = read_shapes(path, "model")
    if not is_ldm_sd(shapes):
        return _other_describer(path) or None
    return describe_single_file(path, shapes, global_step)


def describe_single_file(
    path: Path, shapes: dict[str, tuple[int, ...]], global_step: int | None
) -> dict[str, Any]:
    try:
        kind = detect_kind(shapes, global_step, path)
    except SjcError as exc:  # an SD UNet whose version the file does not tell
        return {"model": str(path), "format": "single-file Stable Diffusion (ldm layout)", "kind": exc.problems[0]}
    unet = unet_params(shapes, kind)
    scale = 2 ** (len(vae_ddconfig(shapes)["ch_mult"]) - 1) if any(k.startswith(VAE_PREFIX) for k in shapes) else 8
    text_prefix = OPEN_CLIP_PREFIX if kind.text_encoder == "open_clip" else CLIP_PREFIX
    counts = {
        "unet": parameter_count(shapes, UNET_PREFIX),
        "vae": parameter_count(shapes, VAE_PREFIX),
        "text_encoder": parameter_count(shapes, text_prefix),
    }
    ema = parameter_count(shapes, "model_ema.")
    description = {
        "model": str(path),
        "format": f"single-file Stable Diffusion (ldm layout, {path.suffix.lower().lstrip('.')})",
        "kind": f"Stable Diffusion {kind.version} (from the {kind.reason})",
        "prediction": f"{kind.prediction} ({kind.prediction_reason})",
        "resolution": _resolution(kind.latent_size, scale),
        "channels": f"{unet['in_channels']} latent channels in, {unet['out_channels']} out",
        "unet": f"{unet['model_channels']} base channels x {unet['channel_mult']}, {unet['num_res_blocks']} res blocks "
        f"per level, context {kind.context_dim}",
        "text_encoder": TEXT_ENCODERS[kind.text_encoder],
        "parameters": {**counts, "total": sum(counts.values())},
    }
    if ema:
        description["ema_parameters"] = ema
    if global_step is not None:
        description["global_step"] = global_step
    return description


def describe_folder(folder: Path) -> dict[str, Any]:
    """A diffusers Stable Diffusion folder, from its configs and safetensors headers."""
    config = _json(folder / "unet" / "config.json")
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler = _json(scheduler_file) if scheduler_file.is_file() else {}
    context = config.get("cross_attention_dim")
    version = {768: "v1", 1024: "v2"}.get(context if isinstance(context, int) else -1)
    kind = (
        f"Stable Diffusion {version} (context {context})"
        if version
        else f"Stable Diffusion-like UNet (context {context})"
    )
    size = config.get("sample_size")
    vae_config = _json(folder / "vae" / "config.json") if (folder / "vae" / "config.json").is_file() else {}
    scale = 2 ** (len(vae_config.get("block_out_channels", [0, 0, 0, 0])) - 1)
    counts = {part: _folder_parameters(folder / part) for part in ("unet", "vae", "text_encoder")}
    known = [count for count in counts.values() if count is not None]
    return {
        "model": str(folder),
        "format": "diffusers folder",
        "kind": kind,
        "prediction": f"{scheduler.get('prediction_type', 'epsilon')} (the scheduler's config)",
        "resolution": _resolution(size, scale) if isinstance(size, int) else str(size),
        "channels": f"{config.get('in_channels')} latent channels in, {config.get('out_channels')} out",
        "unet": f"{config.get('block_out_channels')} channels, {config.get('layers_per_block')} res blocks per level",
        "parameters": {**{k: v for k, v in counts.items() if v is not None}, "total": sum(known)},
    }


def _resolution(latent: int, scale: int) -> str:
    return f"{latent * scale}x{latent * scale} pictures, latents {latent}x{latent}"


def _json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SjcError(f"model: cannot read '{path}': {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(loaded, dict):
        raise SjcError(f"model: '{path}' is not a JSON object")
    return loaded


def _folder_parameters(folder: Path) -> int | None:
    """Parameters in a part's safetensors files (None when it has none to read headers from)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                keys = list(handle.keys())  # a safetensors handle is no dict
                total += sum(math.prod(handle.get_slice(key).get_shape()) for key in keys)
        except Exception as exc:
            raise SjcError(
                f"model: cannot read '{file}' as safetensors: {str(exc).splitlines()[0][:200]}"
            ) from None
    return total


def _other_describer(path: Path) -> dict[str, Any] | None:
    """The guided-diffusion describer, where installed (None when it does not know the file either)."""
    try:
        module = importlib.import_module("sjc_plugins.priors.adm_checkpoint")
    except ImportError:
        return None
    describe = getattr(module, "describe", None)
    if not callable(describe):
        return None
    try:
        found = describe(path)
    except SjcError:  # not one of its files either
        return None
    if found is None:
        return None
    return {"model": str(path), **found} if isinstance(found, dict) else {"model": str(path), "kind": str(found)}
