"""Loading the parts of a Zero123 folder that diffusers has no class for: the camera
projection (``cc_projection`` or ``clip_camera_projection``, one linear layer saved by a
community pipeline class) and the CLIP normalisation of ``feature_extractor``.

Files come from the local folder or the hub cache (downloaded only when allowed), like every
other part, and every failure is one line naming the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

from sjc_core.errors import SjcError
from sjc_plugins.priors._diffusion_common import ModelSource, first_line, loading_error

PROJECTION_FOLDERS = ("cc_projection", "clip_camera_projection")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def source_file(source: ModelSource, relative: str, what: str) -> str | None:
    """A file of the model (local folder or hub cache; downloaded when allowed), or None if absent."""
    if source.local_folder:
        path = f"{source.ref}/{relative}"
        return path if source.has_file(relative) else None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    folder, _, name = relative.rpartition("/")
    cached = try_to_load_from_cache(source.ref, relative, revision=source.revision)
    if isinstance(cached, str):
        return cached
    if source.local_files_only:
        return None
    try:
        return hf_hub_download(source.ref, name, subfolder=folder or None, revision=source.revision)
    except Exception as exc:
        if type(exc).__name__ in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
            return None
        raise loading_error(source, folder or None, what, exc) from None


def load_projection(source: ModelSource) -> torch.nn.Linear:
    """The camera projection (``cc_projection`` or ``clip_camera_projection``) as a plain Linear."""
    for folder in PROJECTION_FOLDERS:
        if source_file(source, f"{folder}/config.json", "camera projection") is None:
            continue
        names = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"]
        if source.variant:
            names = [n.replace(".", f".{source.variant}.", 1) for n in names] + names
        for name in names:
            path = source_file(source, f"{folder}/{name}", "camera projection")
            if path is not None:
                return _linear_from_file(path, source, folder)
        raise SjcError(f"prior.model: '{source.ref}/{folder}' has no weights (diffusion_pytorch_model.safetensors or .bin)")
    raise SjcError(
        f"prior.model: '{source.ref}' has no camera projection ({' or '.join(PROJECTION_FOLDERS)}/config.json): "
        "is it a diffusers Zero123 model?"
    )


def _linear_from_file(path: str, source: ModelSource, folder: str) -> torch.nn.Linear:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise loading_error(source, folder, "camera projection", exc) from None
    weights = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    biases = [v for k, v in state.items() if k.endswith("bias") and v.ndim == 1]
    if len(weights) != 1 or len(biases) != 1 or biases[0].shape[0] != weights[0].shape[0]:
        raise SjcError(f"prior.model: '{source.ref}/{folder}' is not one linear layer (keys: {', '.join(sorted(state))})")
    out_features, in_features = weights[0].shape
    layer = torch.nn.Linear(in_features, out_features)
    with torch.no_grad():
        layer.weight.copy_(weights[0].float())
        layer.bias.copy_(biases[0].float())
    return layer


def load_clip_normalisation(source: ModelSource) -> tuple[Sequence[float], Sequence[float]]:
    """``image_mean`` / ``image_std`` of the feature extractor's config (CLIP's values if absent)."""
    path = source_file(source, "feature_extractor/preprocessor_config.json", "feature extractor")
    if path is None:
        return CLIP_MEAN, CLIP_STD
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        mean, std = config.get("image_mean", CLIP_MEAN), config.get("image_std", CLIP_STD)
        if len(mean) != 3 or len(std) != 3 or not all(float(s) > 0 for s in std):
            raise ValueError("image_mean and image_std must hold 3 numbers, std positive")
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise SjcError(f"prior.model: '{source.ref}/feature_extractor/preprocessor_config.json': {first_line(exc)}") from None
