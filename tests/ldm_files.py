"""Tiny Stable Diffusion models written in the original single-file (CompVis/ldm) layout.

The tests build tiny diffusers modules with random weights, then write them under the ldm
key names with this module's own diffusers -> ldm map (independent of the converter under
test): UNet ``model.diffusion_model.*``, VAE ``first_stage_model.*``, and the text encoder
as SD 1.x's ``cond_stage_model.transformer.*`` (OpenAI CLIP in transformers' layout) or SD
2.x's ``cond_stage_model.model.*`` (OpenCLIP: fused ``in_proj`` attention, ``resblocks``, one
more layer than SD 2 uses). The same modules saved as a diffusers folder are the reference.

Sizes follow ldm's fixed choices, so the loader's rules apply unchanged: 32 normalisation
groups, text heads of 64 channels, v1 UNets with 8 heads, v2 UNets with heads of 64 channels
(at least one) and linear projections.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tiny_models import clip_vocab_and_merges, make_clip_tokenizer

LATENT = 64  # what the loader's v1 / v2-base rule gives
TEXT_WIDTH = 64
UNET_CHANNELS = (32, 64)


@dataclass
class TinySd:
    version: str
    unet: Any
    vae: Any
    text_encoder: Any
    extra_layer: dict[str, torch.Tensor]  # SD 2.x: OpenCLIP's last layer, which SD 2 skips


def build_tiny_sd(version: str, seed: int = 0) -> TinySd:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    v2 = version == "v2"
    unet = UNet2DConditionModel(
        sample_size=LATENT if not v2 else 96,
        in_channels=4,
        out_channels=4,
        block_out_channels=UNET_CHANNELS,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=[1, 1] if v2 else 8,
        use_linear_projection=v2,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        scaling_factor=0.18215,
    )
    vocab, _ = clip_vocab_and_merges()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=TEXT_WIDTH,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=1,
            max_position_embeddings=77,
            hidden_act="gelu" if v2 else "quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=1,
        )
    )
    generator = torch.Generator().manual_seed(seed + 1)
    for module in (unet, vae, text_encoder):  # nothing zero-initialised: every weight matters
        for name, param in module.named_parameters():
            scale = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            param.data = torch.randn(param.shape, generator=generator) * 0.05 + scale
    layer = text_model_state(text_encoder)
    layer = {k.split(".", 4)[4]: v for k, v in layer.items() if k.startswith("text_model.encoder.layers.0.")}
    extra = {f"x.{k}": torch.randn(v.shape, generator=generator) * 0.05 for k, v in layer.items()} if v2 else {}
    return TinySd(version, unet.eval(), vae.eval(), text_encoder.eval(), extra)


def text_model_state(text_encoder: Any) -> dict[str, torch.Tensor]:
    """The text encoder's weights under ``text_model.*`` (transformers 5 names them without it)."""
    return {
        k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in text_encoder.state_dict().items()
    }


# -- diffusers -> ldm key names --------------------------------------------------------------------

RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def unet_key(key: str, layers: int = 1, attention_up: tuple[bool, ...] = (False, True)) -> str:
    per = layers + 1
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for old, new in fixed.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]

    def resnet(rest: str) -> str:
        name, tail = rest.split(".", 1)
        return f"{RESNET[name]}.{tail}"

    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * per + j
        return f"input_blocks.{index}.0.{resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{1 + int(m[1]) * per + layers}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{resnet(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * per + j
        return (
            f"output_blocks.{index}.0.{resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
        )
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        block = int(m[1])
        slot = 2 if attention_up[block] else 1
        return f"output_blocks.{block * per + layers}.{slot}.conv.{m[2]}"
    raise KeyError(key)


VAE_RESNET = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_key(key: str, levels: int = 2) -> str:
    for old, new in (("encoder.conv_norm_out", "encoder.norm_out"), ("decoder.conv_norm_out", "decoder.norm_out")):
        if key.startswith(old + "."):
            return new + key[len(old) :]
    if m := re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)", key):
        part, way, block, j, name, tail = m.groups()
        level = int(block) if way == "down" else levels - 1 - int(block)
        return f"{part}.{way}.{level}.block.{j}.{VAE_RESNET[name]}.{tail}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(\w+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{VAE_RESNET[m[3]]}.{m[4]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", key):
        return f"{m[1]}.mid.attn_1.{VAE_ATTENTION[m[2]]}.{m[3]}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def open_clip_state(text_encoder: Any, extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP text weights in open_clip's names (fused q/k/v), plus the extra last layer."""
    state = text_model_state(text_encoder)
    out = {
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": state["text_model.final_layer_norm.weight"],
        "ln_final.bias": state["text_model.final_layer_norm.bias"],
        "text_projection": torch.randn(TEXT_WIDTH, TEXT_WIDTH),
        "logit_scale": torch.tensor(4.6),
    }
    layers = [
        {k.split(".", 4)[4]: v for k, v in state.items() if k.startswith(f"text_model.encoder.layers.{i}.")}
        for i in range(text_encoder.config.num_hidden_layers)
    ]
    layers.append({k[2:]: v for k, v in extra.items()})
    for i, layer in enumerate(layers):
        p = f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[p + f"attn.in_proj_{kind}"] = torch.cat([layer[f"self_attn.{n}_proj.{kind}"] for n in "qkv"])
            out[p + f"attn.out_proj.{kind}"] = layer[f"self_attn.out_proj.{kind}"]
            out[p + f"ln_1.{kind}"] = layer[f"layer_norm1.{kind}"]
            out[p + f"ln_2.{kind}"] = layer[f"layer_norm2.{kind}"]
            out[p + f"mlp.c_fc.{kind}"] = layer[f"mlp.fc1.{kind}"]
            out[p + f"mlp.c_proj.{kind}"] = layer[f"mlp.fc2.{kind}"]
    return out


def ldm_state(sd: TinySd) -> dict[str, torch.Tensor]:
    """The whole model under ldm key names, as a single-file checkpoint holds it."""
    out = {f"model.diffusion_model.{unet_key(k)}": v for k, v in sd.unet.state_dict().items()}
    for k, v in sd.vae.state_dict().items():
        if re.search(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight", k):
            v = v[:, :, None, None]  # ldm's VAE attention uses 1x1 convolutions
        out[f"first_stage_model.{vae_key(k)}"] = v
    if sd.version == "v2":
        out.update(
            {f"cond_stage_model.model.{k}": v for k, v in open_clip_state(sd.text_encoder, sd.extra_layer).items()}
        )
    else:
        out.update({f"cond_stage_model.transformer.{k}": v for k, v in text_model_state(sd.text_encoder).items()})
        out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def write_single_file(sd: TinySd, path: Path, extra: dict[str, Any] | None = None) -> Path:
    """``.safetensors`` (tensors only) or ``.ckpt`` (ldm's {"state_dict": ..., **extra})."""
    state = ldm_state(sd)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, **(extra or {})}, path)
    return path


def write_folder(sd: TinySd, folder: Path, prediction: str) -> Path:
    """The same weights as a diffusers folder (the reference path), SD's DDIM schedule."""
    from diffusers import DDIMScheduler

    folder.mkdir(parents=True, exist_ok=True)
    sd.unet.save_pretrained(folder / "unet")
    sd.vae.save_pretrained(folder / "vae")
    sd.text_encoder.save_pretrained(folder / "text_encoder")
    tokenizer = make_clip_tokenizer()
    if sd.version == "v2":
        from transformers import CLIPTokenizer

        vocab, merges = clip_vocab_and_merges()
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token="!")
    tokenizer.save_pretrained(folder / "tokenizer")
    DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction,
    ).save_pretrained(folder / "scheduler")
    return folder
