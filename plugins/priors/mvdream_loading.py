"""Loading MVDream's weights in both published layouts, each failure one line.

- diffusers layout (ashawkey/mvdream-sd2.1-diffusers, hub id or folder): ``unet/config.json``
  holds MVDream's ldm UNet parameters (``model_channels``, ``channel_mult``, ``camera_dim``, ...)
  and ``unet/diffusion_pytorch_model*.safetensors`` its ldm-named weights (``input_blocks.*``,
  ``camera_embed.*``); ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/`` are plain
  diffusers/transformers folders. A ``unet/`` saved as a diffusers ``UNet2DConditionModel``
  (``class_embed_type = "projection"``) loads as is.
- the original single checkpoint (``checkpoint``: sd-v2.1-base-4view.pt): ``model.diffusion_model.*``
  (with ``camera_embed.*``), the VAE under ``first_stage_model.*`` and the OpenCLIP text tower under
  ``cond_stage_model.model.*``, read with ``torch.load(weights_only=True)`` (or safetensors). The
  UNet's shape is read from the tensors (MVDream's 64 channels per attention head), the VAE's and
  the text encoder's too; MVDream uses OpenCLIP's penultimate layer, so the CLIP text model keeps
  all but the last block. The tokenizer comes from ``model``'s ``tokenizer/`` (default: SD 2.1 base's),
  the noise schedule is MVDream's yaml (scaled-linear 0.00085..0.012, 1000 steps, eps).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from sjc_plugins.priors._diffusion_common import (
    ModelSource,
    VpLadder,
    first_line,
    load_pretrained,
    load_scheduler,
    loading_error,
    quiet_loading,
    resolve_dtype,
    resolve_for_loading,
)
from sjc_plugins.priors.mvdream_options import (
    TOKENIZER_PROBES,
    MVDreamOptions,
    tokenizer_source,
)
from sjc_plugins.priors.mvdream_unet import (
    LDM_UNET_PREFIX,
    MultiViewUNet,
    build_multiview_unet,
    unet_config_from_ldm,
    unet_state_from_ldm,
)

from sjc_core.contracts import BuildContext
from sjc_core.errors import SjcError

HEAD_CHANNELS = 64  # MVDream's num_head_channels (sd-v2-base.yaml); heads change no tensor shape
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.model."
LATENT_SIZE = 32  # MVDream's 256px images


def load_parts(options: MVDreamOptions, ctx: BuildContext, device: torch.device) -> tuple[Any, Any, Any, Any, VpLadder]:
    """(multi-view UNet on ``device``, VAE on the CPU in float32, text encoder on ``device``, tokenizer, ladder)."""
    dtype = resolve_dtype(options.dtype, device)
    if options.checkpoint:
        unet, vae, text_encoder, tokenizer, scheduler = _from_checkpoint(options, ctx)
        ref = options.checkpoint
    else:
        unet, vae, text_encoder, tokenizer, scheduler, ref = _from_folder(options, ctx)
    ladder = VpLadder.from_scheduler(scheduler, ref)
    unet.to(device=device, dtype=dtype).eval().requires_grad_(False)
    vae.to(device="cpu", dtype=torch.float32).eval().requires_grad_(False)
    text_encoder.to(device=device).eval().requires_grad_(False)
    return unet, vae, text_encoder, tokenizer, ladder


def _from_folder(options: MVDreamOptions, ctx: BuildContext) -> tuple[Any, ...]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = resolve_for_loading(options, ctx, probes=("unet/config.json",))
    scheduler = load_scheduler(source, "scheduler")
    config = _unet_config(source)
    if int(config.get("ip_dim", 0) or 0) > 0:
        raise SjcError(f"prior.model: '{source.ref}' is an ImageDream UNet (ip_dim > 0); the mvdream prior takes MVDream's")
    if "model_channels" in config:  # MVDream's ldm UNet (ashawkey's layout)
        diffusers_config = unet_config_from_ldm(config)
        state = _read_unet_weights(source)
        try:
            unet = build_multiview_unet(diffusers_config, unet_state_from_ldm(state, diffusers_config))
        except (KeyError, RuntimeError) as exc:
            raise SjcError(f"prior.model: the UNet weights of '{source.ref}' do not fit MVDream's UNet: {first_line(exc)}") from None
    else:
        unet = MultiViewUNet(load_pretrained(UNet2DConditionModel, source, "unet", "UNet"))
    vae = load_pretrained(AutoencoderKL, source, "vae", "VAE", torch_dtype=torch.float32)
    text_encoder = load_pretrained(CLIPTextModel, source, "text_encoder", "text encoder")
    tokenizer = load_pretrained(CLIPTokenizer, source, "tokenizer", "tokenizer", weights=False)
    return unet, vae, text_encoder, tokenizer, scheduler, source.ref


def _unet_config(source: ModelSource) -> dict[str, Any]:
    from diffusers import UNet2DConditionModel

    kwargs: dict[str, Any] = {"revision": source.revision, "local_files_only": source.local_files_only}
    try:
        with quiet_loading():
            return dict(UNet2DConditionModel.load_config(source.ref, subfolder="unet", **kwargs))
    except Exception as exc:
        raise loading_error(source, "unet", "UNet config", exc) from None


def _read_unet_weights(source: ModelSource) -> dict[str, torch.Tensor]:
    """unet/diffusion_pytorch_model[.variant].safetensors (or .bin, weights_only), from the folder or the hub cache."""
    variant = f".{source.variant}" if source.variant else ""
    names = [f"diffusion_pytorch_model{variant}.safetensors", f"diffusion_pytorch_model{variant}.bin"]
    last: BaseException | None = None
    for name in names:
        try:
            if source.local_folder:
                path = Path(source.ref) / "unet" / name
                if not path.is_file():
                    continue
            else:
                from huggingface_hub import hf_hub_download

                path = Path(hf_hub_download(
                    source.ref, name, subfolder="unet", revision=source.revision, local_files_only=source.local_files_only
                ))
            return read_state(path)
        except SjcError:
            raise
        except Exception as exc:  # not on the hub or in the cache under this name: try the next
            last = exc
    raise loading_error(source, "unet", "UNet weights", last or FileNotFoundError(" or ".join(names)))


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or .pt/.ckpt/.bin with ``weights_only=True`` (a ``state_dict`` entry unwrapped)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SjcError(f"prior.checkpoint: cannot read '{path}': {first_line(exc)}") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise SjcError(f"prior.checkpoint: '{path}' holds no state dict")
    return loaded


def _checkpoint_path(options: MVDreamOptions, ctx: BuildContext) -> Path:
    given = Path(str(options.checkpoint)).expanduser()
    for candidate in ([given] if given.is_absolute() else [Path(ctx.base_dir) / given, given]):
        if candidate.is_file():
            return candidate.resolve()
    raise SjcError(f"prior.checkpoint: file '{options.checkpoint}' does not exist")


def _from_checkpoint(options: MVDreamOptions, ctx: BuildContext) -> tuple[Any, ...]:
    from diffusers import DDIMScheduler
    from transformers import CLIPTokenizer

    path = _checkpoint_path(options, ctx)
    source = resolve_for_loading(options.model_copy(update={"model": tokenizer_source(options)}), ctx, probes=TOKENIZER_PROBES)
    tokenizer = load_pretrained(CLIPTokenizer, source, "tokenizer", "tokenizer", weights=False)
    state = read_state(path)
    try:
        unet = _unet_from_ldm(state)
        vae = _vae_from_ldm(state)
        text_encoder = _text_from_open_clip(state)
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        raise SjcError(f"prior.checkpoint: '{path}' is not an MVDream checkpoint ({first_line(exc)})") from None
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    return unet, vae, text_encoder, tokenizer, scheduler


def _indices(keys: Any, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for key in keys if (m := re.match(pattern, key))})


def ldm_unet_params(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """MVDream's ldm UNet parameters read from the shapes of its tensors (keys without prefix)."""
    keys = list(state)
    base = int(state["input_blocks.0.0.weight"].shape[0])
    blocks = _indices(keys, r"input_blocks\.(\d+)\.")
    levels = len(_indices(keys, r"input_blocks\.(\d+)\.0\.op\.weight")) + 1
    per_level = len(blocks) // levels - 1
    mult, attention, context, depth, linear = [], [], None, 1, True
    for level in range(levels):
        first = 1 + level * (per_level + 1)
        mult.append(int(state[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]) // base)
        attn = f"input_blocks.{first}.1."
        if f"{attn}proj_in.weight" in state:
            attention.append(2**level)
            context = int(state[f"{attn}transformer_blocks.0.attn2.to_k.weight"].shape[1])
            depth = len(_indices(keys, re.escape(attn) + r"transformer_blocks\.(\d+)\."))
            linear = state[f"{attn}proj_in.weight"].ndim == 2
    if context is None:
        context = int(state["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1])
    return {
        "image_size": LATENT_SIZE, "in_channels": int(state["input_blocks.0.0.weight"].shape[1]),
        "out_channels": int(state["out.2.weight"].shape[0]), "model_channels": base, "attention_resolutions": attention,
        "num_res_blocks": per_level, "channel_mult": mult, "num_head_channels": HEAD_CHANNELS,
        "transformer_depth": depth, "context_dim": context, "use_linear_in_transformer": linear,
        "camera_dim": int(state["camera_embed.0.weight"].shape[1]),
    }


def _unet_from_ldm(state: dict[str, torch.Tensor]) -> MultiViewUNet:
    bare = {key[len(LDM_UNET_PREFIX):]: value for key, value in state.items() if key.startswith(LDM_UNET_PREFIX)}
    config = unet_config_from_ldm(ldm_unet_params(bare))
    return build_multiview_unet(config, unet_state_from_ldm(bare, config))


def _vae_from_ldm(state: dict[str, torch.Tensor]) -> Any:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae_state = {key: value for key, value in state.items() if key.startswith(VAE_PREFIX)}
    keys = [key[len(VAE_PREFIX):] for key in vae_state]
    base = int(state[VAE_PREFIX + "encoder.conv_in.weight"].shape[0])
    levels = _indices(keys, r"encoder\.down\.(\d+)\.")
    widths = [int(state[f"{VAE_PREFIX}encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in levels]
    config = {
        "in_channels": int(state[VAE_PREFIX + "encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state[VAE_PREFIX + "decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(widths),
        "up_block_types": ["UpDecoderBlock2D"] * len(widths),
        "block_out_channels": widths,
        "latent_channels": int(state[VAE_PREFIX + "decoder.conv_in.weight"].shape[1]),
        "layers_per_block": len(_indices(keys, r"encoder\.down\.0\.block\.(\d+)\.")),
        "norm_num_groups": min(32, base),
        "sample_size": LATENT_SIZE * 2 ** (len(widths) - 1),
        "scaling_factor": 0.18215,
    }
    vae = AutoencoderKL(**config)
    vae.load_state_dict(convert_ldm_vae_checkpoint(vae_state, config), strict=True)
    return vae


def _text_from_open_clip(state: dict[str, torch.Tensor]) -> Any:
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    tokens = state[CLIP_PREFIX + "token_embedding.weight"]
    width = int(tokens.shape[1])
    layers = len(_indices(state, re.escape(CLIP_PREFIX) + r"transformer\.resblocks\.(\d+)\."))
    config = CLIPTextConfig(
        vocab_size=int(tokens.shape[0]), hidden_size=width,
        intermediate_size=int(state[f"{CLIP_PREFIX}transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        num_hidden_layers=layers - 1,  # MVDream conditions on OpenCLIP's penultimate layer (then ln_final)
        num_attention_heads=max(width // 64, 1),
        max_position_embeddings=int(state[CLIP_PREFIX + "positional_embedding"].shape[0]),
        hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    )
    model = CLIPTextModel(config)
    converted = convert_open_clip_checkpoint(model, state, prefix=CLIP_PREFIX)
    if not any(key.startswith("text_model.") for key in model.state_dict()):  # transformers 5 keys have no text_model.
        converted = {key.removeprefix("text_model."): value for key, value in converted.items()}
    missing, _ = model.load_state_dict(converted, strict=False)  # the last block is not used
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing:
        raise KeyError(f"OpenCLIP text tensors missing: {', '.join(missing[:3])}")
    return model
