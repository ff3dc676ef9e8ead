"""LoRA adapters on a Stable Diffusion prior (``prior.lora``), loaded offline through diffusers'
LoRA loaders and peft, then merged into the weights.

Both common layouts load: kohya's (``lora_unet_<module>.lora_down.weight``, ``.lora_up.weight``,
``.alpha``; ``lora_te_`` for the text encoder) and diffusers/peft's (``unet.<module>.lora_A.weight``
/ ``lora_B``, or the older ``.lora.down`` / ``.lora.up``; ``text_encoder.`` for the text encoder).
diffusers converts either to peft adapters; each adapter gets its recipe scale, so a layer
becomes W + scale * (alpha / rank) * B @ A, and the adapters are then fused into W and the peft
wrappers removed: scoring costs what it cost without LoRA. The same layouts apply to any
``UNet2DConditionModel`` (zero123's, MVDream's) through :func:`apply_lora_to_unet`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from sjc_core.contracts import BuildContext
from sjc_core.errors import SjcError
from sjc_plugins.priors._diffusion_common import quiet_loading
from sjc_plugins.priors.lora_options import LoraEntry, lora_path

LORA_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt")
INSTALL_LORA = 'pip install -e ".[lora]"'


def require_peft(field: str = "prior.lora") -> None:
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise SjcError(f"{field}: LoRA needs peft, which is not installed: {INSTALL_LORA}")


def read_lora(path: Path, field: str) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors (.safetensors; other suffixes only through weights_only pickles)."""
    if path.suffix.lower() not in LORA_SUFFIXES:
        raise SjcError(f"{field}: '{path}' is not a LoRA file ({', '.join(LORA_SUFFIXES)})")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise SjcError(
                f"{field}: cannot read '{path}' as safetensors: {str(exc).splitlines()[0][:200]}"
            ) from None
    from sjc_plugins.priors.ldm_checkpoint import _load_pickle

    loaded = _load_pickle(path, field)
    if not isinstance(loaded, dict):
        raise SjcError(f"{field}: '{path}' holds a {type(loaded).__name__}, not a dictionary of tensors")
    return {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _split(tensors: dict[str, torch.Tensor], path: Path, field: str) -> tuple[dict[str, Any], Any]:
    """diffusers' reading of either layout: (peft-ready state dict, network alphas)."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    try:
        found = StableDiffusionLoraLoaderMixin.lora_state_dict(tensors)
    except Exception as exc:
        raise SjcError(
            f"{field}: '{path}' is not a LoRA in a known layout: {str(exc).splitlines()[0][:200]}"
        ) from None
    state, alphas = found[0], found[1]
    state = _text_keys_in_diffusers_form(state)
    if not any(key.startswith(("unet.", "text_encoder.")) for key in state):
        raise SjcError(f"{field}: '{path}' holds no UNet or text-encoder LoRA keys (kohya or diffusers layout)")
    return state, alphas


def _text_keys_in_diffusers_form(state: dict[str, Any]) -> dict[str, Any]:
    """Text-encoder keys of diffusers' older attention-processor form (``q_proj`` as ``to_q_lora``, what its
    kohya conversion gives) renamed explicitly: its loader only recognises that form when ``to_out_lora``
    is among them, so a LoRA on some projections alone would be refused."""
    from diffusers.utils.state_dict_utils import StateDictType, convert_state_dict_to_diffusers

    text = {k: v for k, v in state.items() if k.startswith("text_encoder.")}
    if not any(re.search(r"\.to_(q|k|v|out)_lora\.", key) for key in text):
        return state
    converted = convert_state_dict_to_diffusers(text, original_type=StateDictType.DIFFUSERS_OLD)
    return {**{k: v for k, v in state.items() if k not in text}, **converted}


@contextlib.contextmanager
def _silent(*names: str) -> Iterator[None]:
    """No log lines from these libraries (diffusers logs a failed adapter load as an error before
    raising it): the failure reaches the user as one line."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _reason(exc: BaseException) -> str:
    """The telling line of a loading error (torch lists size mismatches below a heading)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    telling = next((line for line in lines if line.startswith(("size mismatch", "Missing", "Unexpected"))), lines[0])
    return telling[:240]


def _merge_and_unwrap(model: torch.nn.Module, names: list[str]) -> None:
    """Fuse the named adapters into the base weights, then drop the peft wrappers."""
    from diffusers.utils.peft_utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge(adapter_names=[name for name in names if name in module.scaling])
    recurse_remove_peft_layers(model)
    for attribute in ("peft_config", "_hf_peft_config_loaded"):
        with contextlib.suppress(AttributeError):
            delattr(model, attribute)


def _set_scales(model: torch.nn.Module, scales: dict[str, float]) -> None:
    """Each adapter's scale on every layer it touches: scaling = scale * alpha / rank."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name, scale in scales.items():
                if name in module.scaling:
                    module.set_scale(name, scale)


def apply_lora_to_unet(
    unet: Any, files: Sequence[tuple[Path, float]], field: str = "prior.lora", text_encoder: Any = None
) -> None:
    """Load each (file, scale), merge all into ``unet`` (and ``text_encoder`` where the file has its keys)."""
    require_peft(field)
    unet_names: list[str] = []
    text_names: list[str] = []
    scales: dict[str, float] = {}
    for index, (path, scale) in enumerate(files):
        where = f"{field}.{index}"
        state, alphas = _split(read_lora(path, where), path, where)
        name = f"sjc_lora_{index}"
        scales[name] = float(scale)
        try:
            with quiet_loading(), _silent("diffusers", "peft"):
                _load_adapter(state, alphas, name, unet, text_encoder, unet_names, text_names)
        except SjcError:
            raise
        except Exception as exc:  # shapes or module names that do not fit this model
            raise SjcError(
                f"{where}: '{path}' does not fit this model: {_reason(exc)}"
            ) from None
        if name not in unet_names and name not in text_names:
            raise SjcError(f"{where}: '{path}' has no keys for this model's UNet or text encoder")
    for model, names in ((unet, unet_names), (text_encoder, text_names)):
        if names:
            _set_scales(model, {name: scales[name] for name in names})
            _merge_and_unwrap(model, names)


def _load_adapter(
    state: dict[str, Any],
    alphas: Any,
    name: str,
    unet: Any,
    text_encoder: Any,
    unet_names: list[str],
    text_names: list[str],
) -> None:
    """Inject one adapter into the UNet and, where the file has its keys, the text encoder."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader

    if any(key.startswith("unet.") for key in state):
        Loader.load_lora_into_unet(state, alphas, unet=unet, adapter_name=name)
        unet_names.append(name)
    if text_encoder is not None and any(key.startswith("text_encoder.") for key in state):
        Loader.load_lora_into_text_encoder(
            state, alphas, text_encoder=text_encoder, prefix="text_encoder", adapter_name=name
        )
        text_names.append(name)


def apply_loras(unet: Any, text_encoder: Any, entries: Sequence[LoraEntry], ctx: BuildContext) -> None:
    """The recipe's ``prior.lora`` list, paths resolved like the model's (recipe folder first)."""
    files = [(lora_path(entry.path, ctx, f"prior.lora.{i}.path"), entry.scale) for i, entry in enumerate(entries)]
    with torch.no_grad():
        apply_lora_to_unet(unet, files, text_encoder=text_encoder)
