"""Trilinear interpolation on a dense [Z, Y, X(, C)] grid, as gathers and their transpose.

``grid_sample(align_corners=False)`` semantics with zero padding: voxel i's centre sits at
continuous index u = i, and a corner outside the grid contributes 0. :class:`Corners`
holds, per sample, the lower corner's flat index and the per-axis weights, and makes each
of the eight corners' (index, weight) on demand: corner by corner, the gathers and scatters
never hold an [8, M] table (on 775k samples, 24 MB instead of 50 MB kept for the backward,
and the small per-corner temporaries stay in cache). Every function runs on the tensors'
own device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

CORNER_OFFSETS = tuple((dz, dy, dx) for dz in range(2) for dy in range(2) for dx in range(2))


@dataclass(frozen=True)
class Corners:
    """The trilinear corners of M samples in a grid of ``size_xyz`` voxels.

    ``base`` [M] int64 is the flat index of the lower corner; ``wzy`` [4, M] the products
    of the z and y weights for (dz, dy) = (0,0), (0,1), (1,0), (1,1), with the fade that
    zero-pads samples within half a voxel outside the grid; ``wx`` [2, M] the x weights.
    A corner's weight is then one product and its index one addition.
    """

    base: torch.Tensor
    wzy: torch.Tensor
    wx: torch.Tensor
    size_xyz: tuple[int, int, int]

    @property
    def count(self) -> int:
        return int(self.base.shape[0])

    def corner(self, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat index [M] int64, weight [M]) of corner ``number`` (0..7, z-major order)."""
        dz, dy, dx = CORNER_OFFSETS[number]
        X, Y, _ = self.size_xyz
        return self.base + (dz * X * Y + dy * X + dx), self.wzy[2 * dz + dy] * self.wx[dx]

    def select(self, rows: torch.Tensor) -> "Corners":
        """The corners of a subset of the samples (``rows`` indexes this set)."""
        return Corners(self.base.index_select(0, rows), self.wzy.index_select(1, rows), self.wx.index_select(1, rows), self.size_xyz)

    def table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All corners at once, [8, M] indices and weights (for tests and small sets)."""
        pairs = [self.corner(c) for c in range(8)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def trilinear_corners(u: torch.Tensor, size_xyz: tuple[int, int, int]) -> Corners:
    """The corners of continuous voxel coordinates ``u`` [3, M] (rows x, y, z; voxel i's
    centre at u = i) in a [Z, Y, X] grid.

    Clamping u into [0, size-1] and scaling by ``prod(1 - |u - clamped|)`` gives exactly
    the weights grid_sample keeps (a corner outside the grid would only ever be paired with
    the edge voxel on that axis).
    """
    X, Y, Z = size_xyz
    sizes = (X, Y, Z)
    clamped = torch.stack([u[axis].clamp(0, sizes[axis] - 1) for axis in range(3)])
    fade = (u - clamped).abs_().neg_().add_(1).clamp_(min=0).prod(dim=0)
    lower = clamped.to(torch.int64)
    lower = torch.stack([lower[axis].clamp_(max=sizes[axis] - 2) for axis in range(3)])
    frac = clamped - lower
    rest = 1 - frac
    base = (lower[2] * (X * Y)).add_(lower[1] * X).add_(lower[0])
    wz = (rest[2] * fade, frac[2] * fade)
    wy = (rest[1], frac[1])
    wzy = torch.stack([wz[dz] * wy[dy] for dz in range(2) for dy in range(2)])
    return Corners(base, wzy, torch.stack([rest[0], frac[0]]), (X, Y, Z))


def gather_corners(table: torch.Tensor, corners: Corners) -> torch.Tensor:
    """Trilinear values [M, C] of a channels-last table [G, C] (corners summed in order 0..7)."""
    if table.shape[1] == 1:  # one channel: plain 1-D gathers and products
        flat = table.reshape(-1)
        index, weight = corners.corner(0)
        out = flat.index_select(0, index) * weight
        for number in range(1, 8):
            index, weight = corners.corner(number)
            out.addcmul_(flat.index_select(0, index), weight)
        return out[:, None]
    index, weight = corners.corner(0)
    out = take_rows(table, index) * weight[:, None]
    for number in range(1, 8):
        index, weight = corners.corner(number)
        out.addcmul_(take_rows(table, index), weight[:, None])
    return out


def scatter_corners(corners: Corners, values: torch.Tensor, rows: int) -> torch.Tensor:
    """Transpose of :func:`gather_corners`: out[g] = sum over samples s and corners c with
    index_c[s] == g of weight_c[s] * values[s], out [rows, C].

    1-D ``scatter_add_`` per corner and channel into a channels-first buffer (a tight loop
    on the CPU, atomic adds on GPUs; a 2-D ``index_add_`` is ~30x slower on the CPU).
    """
    channels = values.shape[1]
    out = torch.zeros(channels, rows, dtype=values.dtype, device=values.device)
    by_channel = values.t()
    for number in range(8):
        index, weight = corners.corner(number)
        for ch in range(channels):
            out[ch].scatter_add_(0, index, weight * by_channel[ch])
    return out.t()


_WIDE_ELEMENTS = {4: torch.int32, 8: torch.int64, 16: torch.complex128}


def take_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 2-D table; rows of 4, 8 or 16 bytes move as single wide
    elements (a 1-D gather, ~3x faster on the CPU than gathering rows of floats)."""
    wide = _WIDE_ELEMENTS.get(table.shape[1] * table.element_size())
    if wide is None or not table.is_contiguous():
        return table.index_select(0, index)
    rows = table.view(wide).reshape(-1).index_select(0, index)
    return rows.view(table.dtype).view(-1, table.shape[1])


class TrilinearGather(torch.autograd.Function):
    """Trilinear values of a channels-last table [G, C] at precomputed corners -> [M, C]."""

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, corners: Corners) -> torch.Tensor:  # type: ignore[override]
        ctx.corners = corners
        ctx.rows = table.shape[0]
        return gather_corners(table, corners)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None
        return scatter_corners(ctx.corners, grad, ctx.rows), None
