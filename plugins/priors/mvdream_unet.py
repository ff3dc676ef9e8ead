"""MVDream's multi-view UNet, built from diffusers' ``UNet2DConditionModel``.

MVDream is the SD 2.1 UNet with two changes (bytedance/MVDream, ``MultiViewUNetModel``):

- the self-attention (``attn1``) of every transformer block attends across the N views of one
  object: its tokens [B*N, L, C] are read as [B, N*L, C] for the attention and back after
  (:class:`MultiViewSelfAttention`, a diffusers attention processor); cross-attention to the
  text stays per view;
- a camera MLP ``Linear(16, T), SiLU, Linear(T, T)`` (T the time-embedding width) whose output
  is added to the timestep embedding. diffusers' ``class_embed_type = "projection"`` with
  ``projection_class_embeddings_input_dim = 16`` is that MLP (``TimestepEmbedding``: linear_1,
  SiLU, linear_2) added as ``emb = time_emb + class_emb``; the camera goes in as ``class_labels``.

Weights come in MVDream's ldm key layout in both published forms (the original checkpoint
under ``model.diffusion_model.``, ashawkey's diffusers-layout ``unet/`` folder without the
prefix): :func:`unet_config_from_ldm` turns the ldm UNet parameters into a diffusers config and
:func:`unet_state_from_ldm` renames the keys with diffusers' own single-file converter, the
camera MLP (``camera_embed.0`` / ``camera_embed.2``) to ``class_embedding.linear_1`` / ``linear_2``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

LDM_UNET_PREFIX = "model.diffusion_model."
CAMERA_KEYS = {
    "camera_embed.0.weight": "class_embedding.linear_1.weight",
    "camera_embed.0.bias": "class_embedding.linear_1.bias",
    "camera_embed.2.weight": "class_embedding.linear_2.weight",
    "camera_embed.2.bias": "class_embedding.linear_2.bias",
}


class MultiViewSelfAttention:
    """An attention processor for ``attn1``: the ``num_views`` consecutive images of the batch
    (one object's views) share one attention over all their tokens."""

    def __init__(self, num_views: int = 1) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.num_views = num_views
        self.inner = AttnProcessor2_0()

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        views = self.num_views
        if views <= 1 or hidden_states.ndim != 3:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        batch, length, channels = hidden_states.shape
        if batch % views:
            raise ValueError(f"a batch of {batch} is not made of groups of {views} views")
        joint = hidden_states.reshape(batch // views, views * length, channels)  # (b f) l c -> b (f l) c
        out = self.inner(attn, joint, encoder_hidden_states, attention_mask, temb)
        return out.reshape(batch, length, out.shape[-1])


class MultiViewUNet(torch.nn.Module):
    """A camera-conditioned ``UNet2DConditionModel`` whose self-attention spans the views."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.unet = unet
        self.views = MultiViewSelfAttention()
        processors = {
            name: self.views if name.endswith("attn1.processor") else AttnProcessor2_0()
            for name in unet.attn_processors
        }
        unet.set_attn_processor(processors)

    @property
    def config(self) -> Any:
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, cameras: torch.Tensor, num_views: int
    ) -> torch.Tensor:
        """Noise prediction for x [B*N, C, h, w]: consecutive groups of ``num_views`` images are one
        object; ``cameras`` [B*N, 16] (MVDream's embedding), ``text`` [B*N, L, D]."""
        self.views.num_views = num_views
        cameras = cameras.to(device=x.device, dtype=self.unet.dtype)
        return self.unet(x, timesteps, encoder_hidden_states=text, class_labels=cameras).sample


def unet_config_from_ldm(params: Mapping[str, Any]) -> dict[str, Any]:
    """A ``UNet2DConditionModel`` config from MVDream's ldm UNet parameters (its yaml's
    ``unet_config.params``, or ashawkey's ``unet/config.json``)."""
    base = int(params["model_channels"])
    mults = [int(m) for m in params["channel_mult"]]
    widths = [base * m for m in mults]
    attention = {int(r) for r in params.get("attention_resolutions", ())}
    head_channels = int(params.get("num_head_channels", -1) or -1)
    heads = [w // head_channels for w in widths] if head_channels > 0 else [int(params["num_heads"])] * len(widths)
    down, up, resolution = [], [], 1
    for level in range(len(widths)):
        down.append("CrossAttnDownBlock2D" if resolution in attention else "DownBlock2D")
        if level != len(widths) - 1:
            resolution *= 2
    for _ in widths:
        up.append("CrossAttnUpBlock2D" if resolution in attention else "UpBlock2D")
        resolution //= 2
    context = params.get("context_dim")
    depth = params.get("transformer_depth", 1)
    return {
        "sample_size": int(params.get("image_size", 32)),
        "in_channels": int(params.get("in_channels", 4)),
        "out_channels": int(params.get("out_channels", 4)),
        "block_out_channels": widths,
        "layers_per_block": int(params["num_res_blocks"]),
        "down_block_types": down,
        "up_block_types": up,
        "cross_attention_dim": int(context[0] if isinstance(context, (list, tuple)) else context),
        "attention_head_dim": heads,
        "use_linear_projection": bool(params.get("use_linear_in_transformer", True)),
        "transformer_layers_per_block": depth if isinstance(depth, int) else list(depth),
        "class_embed_type": "projection",
        "projection_class_embeddings_input_dim": int(params.get("camera_dim", 16)),
        "norm_num_groups": 32,
    }


def unet_state_from_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename an ldm-layout MVDream UNet state (keys with or without ``model.diffusion_model.``)
    to ``UNet2DConditionModel`` keys; raises KeyError naming a missing tensor."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    bare = {key.removeprefix(LDM_UNET_PREFIX): value for key, value in state.items()}
    ldm = {LDM_UNET_PREFIX + key: value for key, value in bare.items() if not key.startswith("camera_embed.")}
    plain = {key: value for key, value in config.items() if key != "class_embed_type"}
    converted = convert_ldm_unet_checkpoint(ldm, plain)
    for old, new in CAMERA_KEYS.items():
        if old not in bare:
            raise KeyError(old)
        converted[new] = bare[old]
    return converted


def build_multiview_unet(config: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None) -> MultiViewUNet:
    """The UNet of ``config`` (diffusers keys), with ``state`` (diffusers keys) loaded strictly when given."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**config)
    if state is not None:
        unet.load_state_dict(dict(state), strict=True)
    return MultiViewUNet(unet)
