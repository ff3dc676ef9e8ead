"""Reading a guided-diffusion (ADM) checkpoint safely and reading its architecture off its tensors.

The authors' ``release.tar`` holds ``guided_ddpm/models/lsun_bedroom.pt`` and
``guided_ddpm/models/lsun_ffhq.pt``: plain ``state_dict``s of guided-diffusion's ``UNetModel``.
The reference (pals-ttic/sjc ``adapt_gddpm.py``) builds both from one config, ``m_lsun_256``
(the FFHQ file is its ``category="ffhq"``), which is :data:`RELEASE_CONFIG` here:
image_size 256, num_channels 256, num_res_blocks 2, attention_resolutions "32,16,8",
num_head_channels 64, resblock_updown, use_scale_shift_norm, learn_sigma, class_cond False,
dropout 0.1, use_fp16 (the torso runs in float16 there), diffusion_steps 1000, linear noise
schedule; channel_mult comes from guided-diffusion's ``create_model`` default for 256px,
(1, 1, 2, 2, 4, 4).

Files are read with ``torch.load(..., weights_only=True)`` only (or safetensors): a pickle
that needs anything but tensors and plain containers is refused with one line naming the
file. What the tensors determine is read from them: channels, channel multipliers, residual
blocks per level, attention levels, scale-shift norm, up/down-sampling blocks, learned
sigma. What they cannot tell -- the attention head width and the image size -- comes from
the options (the release's 64 channels per head) and guided-diffusion's own defaults, whose
deepest level is always 8x8 (64px: 4 levels, 128px: 5, 256px: 6, 512px: 7).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sjc_core.errors import SjcError
from sjc_plugins.priors.adm_unet import AdmConfig, AdmUNet

RELEASE_CONFIG = AdmConfig()  # the defaults are the authors' m_lsun_256 (see the module docstring)
RELEASE_FILES = {"ffhq": "lsun_ffhq.pt", "lsun-bedroom": "lsun_bedroom.pt"}
NESTED_KEYS = ("state_dict", "model", "ema")  # wrappers some training scripts save around the weights
DEEPEST_SIZE = 8  # guided-diffusion's default channel_mult ends every image size at 8x8


ADM_MARKERS = ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight")


def looks_like_adm(keys: Any) -> bool:
    """Whether a state dict's top-level key names are guided-diffusion's UNet (cheap: names only)."""
    names = set(keys)
    return all(marker in names for marker in ADM_MARKERS)


def _refuse(path: Path, why: str) -> SjcError:
    return SjcError(f"prior.model: '{path}' {why}")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors by name, as stored (nothing executed: weights_only pickles or safetensors)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise _refuse(path, f"is not a readable safetensors file: {_first_line(exc)}") from None
    try:
        loaded = _torch_load(path)
    except Exception as exc:  # UnpicklingError for a pickle that needs code, or a damaged file
        raise _refuse(
            path, f"cannot be read as plain tensors (weights_only=True; arbitrary pickles are refused): {_first_line(exc)}"
        ) from None
    return _as_state_dict(loaded, path)


def _torch_load(path: Path) -> Any:
    """weights_only, memory-mapped when the file is in the zip format (no copy of a 2 GB file)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # a legacy (pre-zip) file cannot be mapped; anything else is real
            raise
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _as_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, dict) and not any(isinstance(value, torch.Tensor) for value in loaded.values()):
        nested = [loaded[key] for key in NESTED_KEYS if isinstance(loaded.get(key), dict)]
        loaded = nested[0] if nested else loaded
    if not isinstance(loaded, dict) or not loaded:
        raise _refuse(path, f"holds a {type(loaded).__name__}, not a state dict of tensors")
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise _refuse(path, f"holds a non-tensor object ({type(value).__name__}) at key '{key}'; not a state dict")
    return {str(key): value for key, value in loaded.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _block_count(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}\.(\d+)\.")
    indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _has_upsampler(state: dict[str, torch.Tensor], block: int) -> tuple[bool, bool]:
    """(whether output block ``block`` ends with an upsampler, whether it is a residual block)."""
    prefix = f"output_blocks.{block}."
    for position in (1, 2):
        if f"{prefix}{position}.in_layers.0.weight" in state:
            return True, True
        if f"{prefix}{position}.conv.weight" in state:
            return True, False
    return False, False


def infer_config(state: dict[str, torch.Tensor], path: Path, num_heads: int = 4, num_head_channels: int = 64) -> AdmConfig:
    """The UNet these tensors belong to; one line naming the file and the key when they do not fit."""

    def tensor(key: str) -> torch.Tensor:
        if key not in state:
            raise _refuse(path, f"is not a guided-diffusion (ADM) UNet: no key '{key}'")
        return state[key]

    if "label_emb.weight" in state:
        raise _refuse(path, "is a class-conditional ADM (key 'label_emb.weight'); only unconditional models are priors here")
    model_channels = tensor("time_embed.0.weight").shape[1]
    stem = tensor("input_blocks.0.0.weight")
    out = tensor("out.2.weight")
    inputs, outputs = _block_count(state, "input_blocks"), _block_count(state, "output_blocks")
    ups = [block for block in range(outputs) if _has_upsampler(state, block)[0]]
    res_blocks = ups[0] if ups else outputs - 1
    levels = outputs // (res_blocks + 1) if res_blocks >= 0 else 0
    if res_blocks < 1 or levels < 1 or outputs != levels * (res_blocks + 1) or inputs != outputs:
        raise _refuse(
            path, f"has an ADM block layout sjc cannot read ({inputs} input blocks, {outputs} output blocks)"
        )
    channels, attention_ds, scale_shift = [], [], True
    for level in range(levels):
        block = f"input_blocks.{1 + level * (res_blocks + 1)}"
        width = tensor(f"{block}.0.in_layers.2.weight").shape[0]
        channels.append(width)
        scale_shift = tensor(f"{block}.0.emb_layers.1.weight").shape[0] == 2 * width
        if f"{block}.1.qkv.weight" in state:
            attention_ds.append(2**level)
    mult = tuple(int(c // model_channels) if c % model_channels == 0 else c / model_channels for c in channels)
    if stem.shape[0] != channels[0]:
        raise _refuse(path, f"key 'input_blocks.0.0.weight' has {stem.shape[0]} channels, its first level {channels[0]}")
    config = AdmConfig(
        in_channels=stem.shape[1],
        model_channels=model_channels,
        out_channels=out.shape[0],
        num_res_blocks=res_blocks,
        channel_mult=mult,
        attention_ds=tuple(attention_ds),
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        use_scale_shift_norm=scale_shift,
        resblock_updown=_has_upsampler(state, ups[0])[1] if ups else True,
        image_size=DEEPEST_SIZE * 2 ** (levels - 1),
    )
    _check_heads(config, [channels[ds.bit_length() - 1] for ds in attention_ds] + [channels[-1]], path)
    return config


def _check_heads(config: AdmConfig, widths: list[int], path: Path) -> None:
    for width in widths:
        if config.num_head_channels == -1:
            if config.num_heads < 1 or width % config.num_heads:
                raise SjcError(f"prior.num_heads: {config.num_heads} heads do not divide {width} channels of '{path}'")
        elif config.num_head_channels < 1 or width % config.num_head_channels:
            raise SjcError(
                f"prior.num_head_channels: {config.num_head_channels} does not divide the {width} attention "
                f"channels of '{path}' (set it, or -1 with prior.num_heads)"
            )


def check_layout(model: AdmUNet, state: dict[str, torch.Tensor], path: Path) -> None:
    """Every key the network has, with its shape, and no other: else one line naming the first bad key."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise _refuse(path, f"does not fit the ADM layout read from it: missing key '{key}'")
        if tuple(state[key].shape) != tuple(value.shape):
            raise _refuse(
                path, f"does not fit the ADM layout read from it: key '{key}' has shape "
                f"{list(state[key].shape)}, expected {list(value.shape)}"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise _refuse(path, f"does not fit the ADM layout read from it: unexpected key '{extra[0]}'")


def load_adm(path: Path, num_heads: int = 4, num_head_channels: int = 64) -> AdmUNet:
    """The UNet with the file's weights in float32 (release files may store float16), in eval mode."""
    state = read_tensors(path)
    config = infer_config(state, path, num_heads, num_head_channels)
    model = AdmUNet(config)
    check_layout(model, state, path)
    model.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    return model.eval().requires_grad_(False)


def describe(path: str | Path) -> dict[str, Any]:
    """What the file is, read from its tensors without building the network (for ``sjc prior-info``)."""
    path = Path(path)
    state = read_tensors(path)
    config = infer_config(state, path, num_head_channels=-1, num_heads=1)  # heads do not change the weights
    dtypes = sorted({str(value.dtype).removeprefix("torch.") for value in state.values()})
    return {
        "kind": "adm",
        "architecture": "guided-diffusion UNet (ADM)",
        "resolution": config.image_size,
        "channels": config.in_channels,
        "out_channels": config.out_channels,
        "learned_sigma": config.learn_sigma,
        "model_channels": config.model_channels,
        "channel_mult": list(config.channel_mult),
        "num_res_blocks": config.num_res_blocks,
        "attention_resolutions": [config.image_size // ds for ds in config.attention_ds],
        "parameters": sum(value.numel() for value in state.values()),
        "dtype": ",".join(dtypes),
        "release_layout": _is_release_layout(config),
    }


def _is_release_layout(config: AdmConfig) -> bool:
    """Whether the tensors have the shape of the authors' FFHQ / LSUN-bedroom files."""
    fields = ("in_channels", "model_channels", "out_channels", "num_res_blocks", "channel_mult", "attention_ds")
    return all(getattr(config, name) == getattr(RELEASE_CONFIG, name) for name in fields) and config.resblock_updown
