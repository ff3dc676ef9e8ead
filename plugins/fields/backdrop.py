"""A plain backdrop that the data determines, shared by the voxel and hash-grid fields.

When the prior's images all stand on one colour (a white or dark studio backdrop), a field
whose background starts grey must learn that colour through the score alone, and with the
background's small learning rate (the reference's 1e-4) it never does: the renders keep a
grey frame, and the score paints the backdrop onto a haze of voxels in front of it instead.
Starting the background at the backdrop leaves the voxels to the object: the score then
empties the space around it. The colours still start grey (2*sigmoid-1 of 0): started at a
white backdrop they sit where the sigmoid is flat and learn the object's colours far more
slowly (on the object suite's white-background molecule, 12 dB against 27 dB held-out after
500 steps).

The background is ``activate(base + texture)``: the texture (the reference's, zero-padded at
its edges, starting at zero) learns as before, ``base`` is the backdrop's raw value (a buffer, not learnt; it is
derived again from the prior whenever the field is built, so it is not in checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sjc_core.errors import SjcError
from sjc_plugins.fields.shading import activate, background_lookup, raw_for

BACKGROUND_MARGIN = 1e-3  # the background may come within 0.1 % of white or black


@dataclass(frozen=True)
class Backdrop:
    """The raw value (before the activation) of a plain backdrop, one per channel."""

    background: torch.Tensor  # [C]


def plain_backdrop(
    enabled: bool, values: tuple[float, ...] | None, channels: int, activation: str
) -> Backdrop | None:
    """The backdrop to start from, or None (option off, or the prior reports none)."""
    if not enabled or values is None:
        return None
    if len(values) != channels:
        raise SjcError(
            f"field.background_from_prior: the prior's plain background has {len(values)} values for "
            f"{channels} channels"
        )
    value = torch.tensor([float(v) for v in values], dtype=torch.float32)
    return Backdrop(background=raw_for(value, activation, BACKGROUND_MARGIN))


def register_backdrop(
    field: torch.nn.Module, backdrop: Backdrop | None, channels: int, device: torch.device | str
) -> None:
    """Give ``field`` the ``bg_base`` buffer (zeros without a backdrop: the reference's background).

    With a backdrop the texture starts at zero, whatever the field drew for it: a random
    texture on top (the reference's N(0, 1) draw) would paint coloured blotches over the
    backdrop that its small learning rate never removes, and the score would then fill the
    space in front of them with haze (the hash grid stalled near 25 dB on the object suite so).
    """
    base = torch.zeros(channels) if backdrop is None else backdrop.background
    field.register_buffer("bg_base", base.to(device), persistent=False)
    field.has_backdrop = backdrop is not None
    texture = getattr(field, "bg", None)
    if backdrop is not None and texture is not None:
        with torch.no_grad():
            texture.zero_()


def backdrop_background(field: torch.nn.Module, directions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Background features along unit directions [N, 3] -> [N, C] for a field with
    ``bg`` (texture or None), ``bg_base``, ``has_backdrop``, ``activation`` and ``channels``."""
    base = field.bg_base if field.has_backdrop else None
    if field.bg is not None:
        return background_lookup(field.bg, directions, field.activation, base)
    if base is None:  # no texture, no backdrop: zero features (the reference's "no background")
        return directions.new_zeros(directions.shape[0], field.channels).to(dtype)
    return activate(base.to(dtype), field.activation).expand(directions.shape[0], -1)
