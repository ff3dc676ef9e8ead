"""The splats' density and colour at arbitrary points (``sjc export-mesh``), without N x M work.

A point is affected only by splats whose 3-sigma reach contains it. The splats are binned
into a uniform grid of cells over the box (each splat into every cell its reach's bounding
box overlaps), and each point meets only the splats listed in its own cell: the work is
proportional to (point, nearby splat) pairs. Points outside the box meet no splat.
"""

from __future__ import annotations

import torch
from sjc_plugins.fields.splat_raster import Splats, covariances

REACH_SIGMAS = 3.0
MAX_CELLS = 48  # cells per axis
POINT_CHUNK = 1 << 15


def splat_sums(splats: Splats, points: torch.Tensor, half: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the Gaussians [P], each weighted by ``splats.opacities`` and cut at 3 sigma
    (Mahalanobis), and the same sum of their features [P, C]."""
    count, channels = splats.means.shape[0], splats.features.shape[1]
    density = points.new_zeros(points.shape[0])
    mixed = points.new_zeros(points.shape[0], channels)
    if count == 0 or points.shape[0] == 0:
        return density, mixed
    reach = REACH_SIGMAS * splats.scales.amax(-1)
    cells = int(min(MAX_CELLS, max(1, round(2 * half / max(float(reach.median()) * 2, 1e-6)))))
    size = 2 * half / cells
    lo = ((splats.means - reach[:, None] + half) / size).floor().clamp(0, cells - 1).long()
    hi = ((splats.means + reach[:, None] + half) / size).floor().clamp(0, cells - 1).long()
    span = hi - lo + 1
    volume = span.prod(-1)
    splat_of = torch.repeat_interleave(torch.arange(count, device=points.device), volume)
    local = torch.arange(splat_of.shape[0], device=points.device) - torch.repeat_interleave(torch.cumsum(volume, 0) - volume, volume)
    sx, sy = span[splat_of, 0], span[splat_of, 1]
    ix = lo[splat_of, 0] + local % sx
    iy = lo[splat_of, 1] + (local // sx) % sy
    iz = lo[splat_of, 2] + local // (sx * sy)
    cell_of = (iz * cells + iy) * cells + ix
    order = torch.argsort(cell_of, stable=True)
    listed = splat_of[order]
    per_cell = torch.bincount(cell_of, minlength=cells**3)
    first = torch.cumsum(per_cell, 0) - per_cell
    precision = torch.linalg.inv(covariances(splats.scales, splats.quats).double()).to(points.dtype)

    for start in range(0, points.shape[0], POINT_CHUNK):
        chunk = points[start : start + POINT_CHUNK]
        inside = ((chunk >= -half) & (chunk <= half)).all(-1)
        index = ((chunk + half) / size).floor().clamp(0, cells - 1).long()
        cell = (index[:, 2] * cells + index[:, 1]) * cells + index[:, 0]
        many = per_cell[cell] * inside
        point_of = torch.repeat_interleave(torch.arange(chunk.shape[0], device=points.device), many)
        offset = torch.arange(point_of.shape[0], device=points.device) - torch.repeat_interleave(torch.cumsum(many, 0) - many, many)
        splat = listed[first[cell[point_of]] + offset]
        delta = chunk[point_of] - splats.means[splat]
        power = torch.einsum("ni,nij,nj->n", delta, precision[splat], delta)
        weight = splats.opacities[splat] * torch.exp(-0.5 * power) * (power <= REACH_SIGMAS**2)
        density[start : start + chunk.shape[0]] = chunk.new_zeros(chunk.shape[0]).index_add(0, point_of, weight)
        mixed[start : start + chunk.shape[0]] = chunk.new_zeros(chunk.shape[0], channels).index_add(
            0, point_of, weight[:, None] * splats.features[splat]
        )
    return density, mixed
