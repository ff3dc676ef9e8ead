"""Stage 3: the sample layout of a ray bundle.

A bundle of n rays shares one sample count k = int(max(t_max - t_min) / step) + 1, and sample
j of ray r sits at ``t_min[r] + step * j``; it is in the box iff ``step * j < t_max[r] - t_min[r]``.
Per-sample tensors are dense and ray-major, [n, k]; the in-box samples of a ray are a prefix
of its row. The weights tensor therefore has exactly the reference's n * k entries
(out-of-box ones are 0), which is what the emptiness regulariser averages over.

On the CPU, fields may pack the in-box samples into compact lists (``SampleBundle.compact``):
counting them is free there, while on a GPU it would wait for the device, so there the
layout stays dense with masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from sjc_core.render.spans import sample_count_k


def compact_samples(device: torch.device) -> bool:
    """Whether fields may pack in-box samples into compact lists on this device.

    Packing needs the number of samples on the host: free on the CPU (and it skips the
    work of out-of-box and sub-threshold samples), a wait for the device elsewhere.
    """
    return torch.device(device).type == "cpu"


@dataclass
class SampleBundle:
    """The sample layout of one ray bundle (see the module docstring).

    ``counts[r]`` in-box samples for ray r (int64 on the rays' device). ``order``, when set,
    is a permutation of the rays that a CPU kernel may process them in for memory locality
    (neighbouring pixels together); outputs are always in ray order.
    """

    ro: torch.Tensor  # [n, 3] float32
    rd: torch.Tensor  # [n, 3] float32
    t_min: torch.Tensor  # [n] float32
    t_max: torch.Tensor  # [n] float32
    step: float
    k: int
    ticks: torch.Tensor  # [k] float32, step * j
    counts: torch.Tensor  # [n] int64
    order: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.ro.shape[0])

    @property
    def device(self) -> torch.device:
        return self.ro.device

    @property
    def compact(self) -> bool:
        """Whether this bundle's fields may use the compact (host-counted) lists below."""
        return compact_samples(self.device)

    @cached_property
    def t_dense(self) -> torch.Tensor:
        """Sample distances [n, k] (also beyond the box; those samples carry no weight)."""
        return self.t_min[:, None] + self.ticks[None, :]

    @cached_property
    def inbox(self) -> torch.Tensor:
        """Bool [n, k]: which samples lie in the box."""
        return torch.arange(self.k, device=self.device)[None, :] < self.counts[:, None]

    def dense_points(self) -> torch.Tensor:
        """World positions of every sample [n*k, 3], ro + rd * t like the reference."""
        points = self.ro[:, None, :] + self.rd[:, None, :] * self.t_dense[:, :, None]
        return points.reshape(-1, 3)

    # ---- compact lists (CPU: see ``compact``)
    @cached_property
    def positions(self) -> torch.Tensor:
        """Dense flat index r * k + j of each in-box sample [M] (int64, ray-major)."""
        return self.inbox.reshape(-1).nonzero().squeeze(1)

    @property
    def total(self) -> int:
        """M, the number of in-box samples (a host value)."""
        return int(self.positions.shape[0])

    @cached_property
    def row_pointer(self) -> torch.Tensor:
        """[n*k + 1] int64: number of in-box samples before each dense position (a CSR row
        pointer from dense positions to the compact list; out-of-box positions are empty)."""
        flat = self.inbox.reshape(-1).to(torch.int64)
        ptr = torch.zeros(flat.numel() + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(flat, 0, out=ptr[1:])
        return ptr

    def points(self) -> torch.Tensor:
        """World positions of the in-box samples [M, 3] (compact list)."""
        return self.dense_points()[self.positions]


def make_bundle(
    ro: torch.Tensor,
    rd: torch.Tensor,
    t_min: torch.Tensor,
    t_max: torch.Tensor,
    step: float,
    order: np.ndarray | None = None,
    k: int | None = None,
) -> SampleBundle:
    """Sample layout with the reference's k (computed here unless the caller has it on the host)."""
    if k is None:
        k = sample_count_k(t_min, t_max, step)
    ticks = step * torch.arange(k, device=ro.device)  # float32, as the reference
    counts = torch.searchsorted(ticks, (t_max - t_min).contiguous(), side="left")
    return SampleBundle(ro=ro, rd=rd, t_min=t_min, t_max=t_max, step=float(step), k=k, ticks=ticks, counts=counts, order=order)


def tile_order(pixels: np.ndarray, width: int, tile: int = 8) -> np.ndarray:
    """Permutation of the given row-major pixel indices that visits them tile by tile."""
    row, col = np.divmod(pixels, width)
    tiles_across = -(-width // tile)
    key = ((row // tile) * tiles_across + col // tile) * (tile * tile) + (row % tile) * tile + col % tile
    return np.argsort(key, kind="stable")
