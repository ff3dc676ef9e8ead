"""The guided-diffusion (ADM) UNet, written here so the authors' ``release.tar`` checkpoints load.

The authors' FFHQ and LSUN-bedroom files are state dicts of OpenAI's guided-diffusion
``UNetModel`` (Dhariwal & Nichol 2021; the reference vendors it as ``guided_diffusion/unet.py``).
This module rebuilds that network with the same module and parameter names, so
``load_state_dict(strict=True)`` takes those files unchanged:

- ``time_embed``: sinusoidal timestep features (cos half first) -> Linear -> SiLU -> Linear.
- ``input_blocks``: a 3x3 stem, then per level ``num_res_blocks`` residual blocks (each
  followed by attention where the level's downsampling rate is in ``attention_ds``) and,
  except at the last level, a downsampler (a residual block with average pooling inside
  when ``resblock_updown``, else a strided convolution ``op``).
- ``middle_block``: residual block, attention, residual block.
- ``output_blocks``: per level, deepest first, ``num_res_blocks + 1`` residual blocks on the
  concatenated skip, attention where configured, and an upsampler ending each level but the
  first (a residual block with nearest-neighbour upsampling inside, or ``conv`` after it).
- ``out``: GroupNorm -> SiLU -> 3x3 conv to ``out_channels`` (twice the image channels when
  the model learned its variance; the prior keeps the first half, the noise prediction).

Residual blocks condition on the timestep by scale and shift after the output GroupNorm
(``use_scale_shift_norm``). Attention is guided-diffusion's legacy head order
(``QKVAttentionLegacy``): the qkv channels are cut into heads first, then each head into
q, k and v. GroupNorms (32 groups) compute in float32 whatever the weights' precision, as
guided-diffusion's ``GroupNorm32`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NORM_GROUPS = 32


@dataclass(frozen=True)
class AdmConfig:
    """The hyper-parameters a guided-diffusion UNet is built from (``create_model``'s, in its terms).

    ``attention_ds`` holds downsampling rates (``image_size // resolution`` for each of
    guided-diffusion's ``attention_resolutions``). ``num_head_channels = -1`` means a fixed
    ``num_heads`` per attention block instead of a fixed width per head.
    """

    in_channels: int = 3
    model_channels: int = 256
    out_channels: int = 6
    num_res_blocks: int = 2
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    attention_ds: tuple[int, ...] = (8, 16, 32)
    num_heads: int = 4
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    image_size: int = 256

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    def level_channels(self, level: int) -> int:
        return int(self.channel_mult[level] * self.model_channels)

    def heads(self, channels: int) -> int:
        if self.num_head_channels == -1:
            return self.num_heads
        return channels // self.num_head_channels


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N] timesteps -> [N, dim] features: cosines then sines of geometric frequencies (float32)."""
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps.float()[:, None] * torch.exp(-math.log(max_period) * exponents)[None]
    features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        features = F.pad(features, (0, 1))
    return features


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and returned in the input's precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(NORM_GROUPS, channels)


class Downsample(nn.Module):
    """Halves the size: a strided 3x3 conv named ``op``, or average pooling (no weights)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Doubles the size (nearest neighbour), then an optional 3x3 conv named ``conv``."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


class ResBlock(nn.Module):
    """Norm-SiLU-conv, timestep scale/shift (or bias), norm-SiLU-dropout-conv, plus the skip path."""

    def __init__(
        self, channels: int, emb_channels: int, out_channels: int, scale_shift: bool, up: bool = False, down: bool = False
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(
            normalization(out_channels), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:  # resample between the activation and the conv, on both paths
            h = self.in_layers[2](self.h_upd(self.in_layers[1](self.in_layers[0](x))))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions, heads cut before q/k/v (guided-diffusion's legacy order)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, *spatial = x.shape
        flat = x.reshape(batch, channels, -1)
        qkv = self.qkv(self.norm(flat))
        length = qkv.shape[-1]
        width = channels // self.heads
        # [B, heads * 3 * width, T] -> per head [width, T] blocks of q, k, v, in that order
        q, k, v = qkv.reshape(batch * self.heads, 3 * width, length).transpose(1, 2).split(width, dim=2)
        attended = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(width)) v
        h = self.proj_out(attended.transpose(1, 2).reshape(batch, channels, length))
        return (flat + h).reshape(batch, channels, *spatial)


class TimestepSequential(nn.Sequential):
    """A block's layers in order; residual blocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class AdmUNet(nn.Module):
    """eps (and variance) prediction ``model(x [N, C, H, W], timesteps [N]) -> [N, out_channels, H, W]``."""

    def __init__(self, config: AdmConfig) -> None:
        super().__init__()
        self.config = config
        mc, emb_dim, ss = config.model_channels, config.model_channels * 4, config.use_scale_shift_norm
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def attention(channels: int) -> AttentionBlock:
            return AttentionBlock(channels, config.heads(channels))

        ch = input_ch = config.level_channels(0)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
        skip_channels, ds, last = [ch], 1, len(config.channel_mult) - 1
        for level in range(last + 1):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, config.level_channels(level), ss)]
                ch = config.level_channels(level)
                if ds in config.attention_ds:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != last:
                down = ResBlock(ch, emb_dim, ch, ss, down=True) if config.resblock_updown else Downsample(ch, True)
                self.input_blocks.append(TimestepSequential(down))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepSequential(ResBlock(ch, emb_dim, ch, ss), attention(ch), ResBlock(ch, emb_dim, ch, ss))
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(last + 1)):
            for index in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, config.level_channels(level), ss)]
                ch = config.level_channels(level)
                if ds in config.attention_ds:
                    layers.append(attention(ch))
                if level and index == config.num_res_blocks:
                    layers.append(ResBlock(ch, emb_dim, ch, ss, up=True) if config.resblock_updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(input_ch, config.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        weight = self.time_embed[0].weight
        features = timestep_embedding(timesteps.to(x.device), self.config.model_channels)
        emb = self.time_embed(features.to(weight.dtype))
        h = x.to(weight.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
