"""Stage 2: where each ray enters and leaves the field's box (the reference's slab test), and
from the spans a bundle's sample count k.

k is a shape, which the host must know before the device has computed anything, so the
same geometry is also computed on the host from host data (:func:`host_spans`, with the box
fetched once by :func:`host_aabb`): nothing waits for the device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sjc_core.render.rays import geometry_dtype


def box_intersect(
    ro: torch.Tensor, rd: torch.Tensor, aabb: torch.Tensor, out_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances [N] (clamped at 0) of rays against the box ``aabb`` [2, 3].

    The reference's slab test, in float64 (where the device has it) on whatever precision
    the rays carry, on the rays' device; a zero direction component becomes 1e-6. A ray
    that misses the box gets t_max <= t_min, hence no in-box samples.
    """
    dtype = geometry_dtype(ro.device)
    o, d = ro.to(dtype), rd.to(dtype)
    d = torch.where(d == 0, torch.full_like(d, 1e-6), d)
    bounds = aabb.detach().to(device=ro.device, dtype=dtype)
    lo = (bounds[0] - o) / d
    hi = (bounds[1] - o) / d
    near, far = torch.minimum(lo, hi), torch.maximum(lo, hi)
    t_min = near.amax(dim=1).clamp(min=0)
    t_max = far.amin(dim=1).clamp(min=0)
    return t_min.to(out_dtype), t_max.to(out_dtype)


def host_aabb(field: Any) -> np.ndarray:
    """The field's box [2, 3] as float64 numpy, fetched from the device once and cached on
    the field (keyed by the buffer's storage and version, so a changed box is refetched)."""
    aabb = field.aabb
    key = (str(aabb.device), aabb.data_ptr(), aabb._version)
    cached = getattr(field, "_sjc_host_aabb", None)
    if cached is None or cached[0] != key:
        cached = (key, aabb.detach().to("cpu", torch.float64).numpy())
        try:
            object.__setattr__(field, "_sjc_host_aabb", cached)
        except (AttributeError, TypeError):  # a frozen or slotted field: no cache, one copy a call
            pass
    return cached[1]


def host_spans(K: Any, c2w: Any, height: int, width: int, subpixel: int, aabb: np.ndarray) -> np.ndarray:
    """float32 ``t_max - t_min`` of every ray, computed on the host from host data (numpy,
    float64, the formulas of :func:`camera_rays` and :func:`box_intersect`).

    The host needs each bundle's k, a shape, before the device has computed anything;
    recomputing the spans here costs ~0.3 ms for 64x64 rays and never waits for the device.
    """
    K = np.asarray(K, dtype=np.float64)[:3, :3]
    c2w = np.asarray(c2w, dtype=np.float64)
    f = int(subpixel)
    ys, xs = np.meshgrid(np.arange(height * f, dtype=np.float64), np.arange(width * f, dtype=np.float64), indexing="ij")
    if f > 1:
        ys, xs = (-0.5 + 1.0 / (2 * f)) + ys / f, (-0.5 + 1.0 / (2 * f)) + xs / f
    pix = np.stack([xs.reshape(-1), ys.reshape(-1), np.ones(xs.size)], axis=1)
    cam = pix @ np.linalg.inv(K).T
    cam = np.concatenate([cam, np.ones((len(cam), 1))], axis=1)
    origin = c2w[:, -1]
    rd = (cam @ c2w.T - origin)[:, :3]
    rd = rd / np.linalg.norm(rd, axis=-1, keepdims=True)
    o, d = origin[:3], rd.copy()
    d[d == 0] = 1e-6
    lo, hi = (aabb[0] - o) / d, (aabb[1] - o) / d
    t_min = np.maximum(np.minimum(lo, hi).max(axis=1), 0.0).astype(np.float32)
    t_max = np.maximum(np.maximum(lo, hi).min(axis=1), 0.0).astype(np.float32)
    return t_max - t_min


def k_for_spans(spans: np.ndarray, step: float) -> int:
    """The reference's k for a bundle: int(float32(max span) / float32(step)) + 1, at least 1
    (a bundle whose rays all miss the box has negative spans: one sample, masked out)."""
    if spans.size == 0:
        return 1
    return max(1, int(np.float32(spans.max()) / np.float32(step)) + 1)


def sample_count_k(t_min: torch.Tensor, t_max: torch.Tensor, step: float) -> int:
    """k of a bundle given as tensors (fetches the spans: for tests and offline tools)."""
    span = (t_max.to(torch.float32) - t_min.to(torch.float32)).detach().cpu().numpy()
    return k_for_spans(span, step)
