"""Stage 1 of a render: camera rays, computed like the reference (inverse intrinsics on
homogeneous pixel centres, rotated by the pose, normalised) in float64 where the device has it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def geometry_dtype(device: torch.device) -> torch.dtype:
    """float64 for ray geometry, as the reference, where the device has it (MPS has not)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def to_device(array: Any, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Host data (numpy, lists, CPU tensors) on ``device`` without waiting for queued work.

    A blocking host-to-device copy makes PyTorch synchronise the stream; ``non_blocking``
    from pageable memory is staged by the driver at once, so the source may be freed.
    """
    host = torch.as_tensor(np.asarray(array) if not torch.is_tensor(array) else array, dtype=dtype)
    return host.to(device, non_blocking=True)


def camera_rays(
    K: Any,
    c2w: Any,
    height: int,
    width: int,
    subpixel: int = 1,
    device: torch.device | str = "cpu",
    keep_float64: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions [N, 3], N = (height*f) * (width*f), row-major, on ``device``.

    Computed like the reference (inverse intrinsics on homogeneous pixel centres, rotated
    by the pose, normalised) in float64, then rounded once to float32 unless
    ``keep_float64``. With ``subpixel`` f the image is sampled on an (H*f) x (W*f) lattice of
    sub-pixel centres, ``-0.5 + (i + 0.5) / f`` around each integer pixel centre.
    """
    K = np.asarray(K, dtype=np.float64)[:3, :3]
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape != (4, 4) or c2w[3, 3] != 1.0:
        raise ValueError("c2w must be a 4x4 camera-to-world matrix with c2w[3, 3] == 1")
    f = int(subpixel)
    if f < 1:
        raise ValueError("subpixel must be >= 1")
    device = torch.device(device)
    dtype = geometry_dtype(device)
    k_inv = to_device(np.linalg.inv(K), device, dtype)  # host data: inverted on the host
    pose = to_device(c2w, device, dtype)
    rows, cols = height * f, width * f
    ys = torch.arange(rows, device=device, dtype=dtype)
    xs = torch.arange(cols, device=device, dtype=dtype)
    if f > 1:
        ys, xs = (-0.5 + 1.0 / (2 * f)) + ys / f, (-0.5 + 1.0 / (2 * f)) + xs / f
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    pix = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1), torch.ones_like(grid_x).reshape(-1)], dim=1)
    cam = pix @ k_inv.t()  # depth 1 on the camera's -z side
    cam = torch.cat([cam, torch.ones_like(cam[:, :1])], dim=1)
    origin = pose[:, -1]
    rd = (cam @ pose.t() - origin)[:, :3]
    rd = rd / torch.linalg.vector_norm(rd, dim=-1, keepdim=True)
    ro = origin[:3].expand_as(rd)
    if keep_float64:
        return ro.contiguous(), rd
    return ro.to(torch.float32).contiguous(), rd.to(torch.float32)
