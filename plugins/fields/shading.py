"""What every field shades with: feature activations and the spherical background.

Shared by the voxel and hash-grid fields so a recipe can swap one for the other and get
the same colours and the same background for the same parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def background_lookup(
    texture: torch.Tensor, directions: torch.Tensor, activation: str, base: torch.Tensor | None = None
) -> torch.Tensor:
    """Spherical background texture [1, C, s, s] seen along unit directions -> [N, C].

    u (polar angle from +z) indexes the width, v (azimuth about z) the height, bilinear with
    zero padding: the reference's lookup, in its operation order (parity depends on it).
    Every field with a texture background uses this, so fields can be swapped in a recipe.
    ``base`` [C] (raw, before the activation) is added to the lookup: a plain backdrop that
    the texture's zero padding cannot fade at the texture's edges.
    """
    x, y, z = directions.to(texture.dtype).t()
    u = torch.atan2((x**2 + y**2) ** 0.5, z) / torch.pi
    v = torch.atan2(y, x) / (torch.pi * 2) + 0.5
    uv = torch.stack([u, v], -1) * 2 - 1
    feats = F.grid_sample(texture, uv.view(1, -1, 1, 2), align_corners=False).view(texture.shape[1], -1).t()
    if base is not None:
        feats = feats + base.to(feats.dtype)
    return activate(feats, activation)


def activate(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "identity":
        return x
    if kind == "sigmoid":
        return torch.sigmoid(x)
    return torch.sigmoid(x) * 2 - 1


def activation_slope(y: torch.Tensor, kind: str) -> torch.Tensor | None:
    """d act / dx from the activated value y (so the raw values need not be kept), or None
    for the identity: sigmoid' = y (1 - y); (2 sigmoid - 1)' = (1 - y^2) / 2."""
    if kind == "identity":
        return None
    if kind == "sigmoid":
        return y * (1 - y)
    return (1 - y * y) * 0.5


def raw_for(value: torch.Tensor, kind: str, margin: float) -> torch.Tensor:
    """The raw value that ``activate`` turns into ``value`` (the inverse activation).

    Values are first kept ``margin`` (a fraction of the activation's range) inside its open
    range, so that a white or black backdrop gives a finite raw value.
    """
    if kind == "identity":
        return value.clone()
    unit = value if kind == "sigmoid" else (value + 1) / 2
    return torch.logit(unit.clamp(margin, 1 - margin))
