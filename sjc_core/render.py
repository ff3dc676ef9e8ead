"""Volume rendering with the reference's conventions: camera rays, slab clipping against the
field's box, fixed-step samples, exclusive transmittance, features only where a sample's
weight passes the field's threshold, a spherical background and depth with the background
at ``BACKGROUND_DEPTH``.

Layout. A bundle of n rays shares one sample count k = int(max(t_max - t_min) / step) + 1,
and sample j of ray r sits at ``t_min[r] + step * j``; it is in the box iff
``step * j < t_max[r] - t_min[r]``. Per-sample tensors are dense and ray-major, [n, k]; the
in-box samples of a ray are a prefix of its row. The weights tensor therefore has exactly
the reference's n * k entries (out-of-box ones are 0), which is what the emptiness
regulariser averages over.

Device. Everything after the camera pose runs on the field's device as torch operations
(float64 where the reference computes in float64 and the device has it). The only numbers
the host needs are shapes: k is one, and the host computes it from the same pose and box
(host data, so no device sync). On the CPU, fields may pack the in-box samples into
compact lists (``SampleBundle.compact``): counting them is free there, while on a GPU it
would wait for the device, so there the layout stays dense with masks.

Any :class:`~sjc_core.contracts.Field` renders through ``density``/``features``/
``background``. A field may also provide ``render_foreground(bundle)`` (see the Field
docstring), a fused implementation of the same integral; the voxel field does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch

from sjc_core.contracts import RenderOutput
from sjc_core.render_host import geometry_dtype, host_aabb, host_spans, k_for_spans, to_device
from sjc_core.volume_weights import VolumeWeights

BACKGROUND_DEPTH = 10.0
DEFAULT_CHUNK_RAYS = 8192  # render_view splits bigger images: at most ~0.5 GB of temporaries a chunk


# --------------------------------------------------------------------------- rays


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


def sample_count_k(t_min: torch.Tensor, t_max: torch.Tensor, step: float) -> int:
    """k of a bundle given as tensors (fetches the spans: for tests and offline tools)."""
    span = (t_max.to(torch.float32) - t_min.to(torch.float32)).detach().cpu().numpy()
    return k_for_spans(span, step)


# --------------------------------------------------------------------------- sample layout


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


# --------------------------------------------------------------------------- compositing


def _generic_foreground(field: Any, bundle: SampleBundle) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground features [n, C] and weights [n, k] through the plain Field contract.

    Compact bundles evaluate the field on in-box samples and their features on samples
    above the threshold only; dense ones evaluate every sample and mask (no host counts).
    """
    n, k = bundle.n, bundle.k
    points = bundle.dense_points()
    if bundle.compact:
        pos = bundle.positions
        sigma_in = field.density(points[pos])
        sigma = torch.zeros(n * k, dtype=sigma_in.dtype, device=sigma_in.device).index_put((pos,), sigma_in)
    else:
        sigma = field.density(points) * bundle.inbox.reshape(-1)
    w = VolumeWeights.apply(sigma.view(n, k), bundle.step)
    keep = (w.detach() > field.weight_threshold).reshape(-1)
    if bundle.compact:
        keep_pos = keep.nonzero().squeeze(1)
        feats = field.features(points[keep_pos])
        dense = torch.zeros(n * k, feats.shape[-1], dtype=feats.dtype, device=feats.device)
        dense = dense.index_put((keep_pos,), feats)
    else:
        feats = field.features(points)
        dense = torch.where(keep[:, None], feats, torch.zeros((), dtype=feats.dtype, device=feats.device))
    rgb = torch.bmm(w[:, None, :], dense.view(n, k, -1)).squeeze(1)
    return rgb, w


def render_rays(
    field: Any,
    ro: torch.Tensor,
    rd: torch.Tensor,
    t_min: torch.Tensor | None = None,
    t_max: torch.Tensor | None = None,
    *,
    k: int | None = None,
) -> RenderOutput:
    """Render a flat bundle: image [N, C], depth [N], opacity [N], weights [N, k].

    ``t_min``/``t_max`` default to the intersection with ``field.aabb`` (clamped at 0);
    a caller's own ``t_min`` can start the rays past a near plane. ``k`` (samples per ray)
    given from host data spares the device read that counting them here would take.
    Rays that miss the box show the background only, at depth ``BACKGROUND_DEPTH``.
    """
    if t_min is None or t_max is None:
        t_min, t_max = box_intersect(ro, rd, field.aabb)
    return _render_bundle(field, make_bundle(ro, rd, t_min, t_max, float(field.step_size), k=k))


def _tile_order(pixels: np.ndarray, width: int, tile: int = 8) -> np.ndarray:
    """Permutation of the given row-major pixel indices that visits them tile by tile."""
    row, col = np.divmod(pixels, width)
    tiles_across = -(-width // tile)
    key = ((row // tile) * tiles_across + col // tile) * (tile * tile) + (row % tile) * tile + col % tile
    return np.argsort(key, kind="stable")


def _render_bundle(field: Any, bundle: SampleBundle) -> RenderOutput:
    """Foreground (fused or generic), then background and depth; flat outputs."""
    rd = bundle.rd
    fused = getattr(field, "render_foreground", None)
    result = fused(bundle) if fused is not None else None
    rgb, w, *sums = result if result is not None else _generic_foreground(field, bundle)
    opacity, depth = sums if sums else (w.sum(dim=1), (w * bundle.t_dense).sum(dim=1))
    remaining = 1 - opacity
    image = rgb + remaining[:, None] * field.background(rd)
    depth = depth + remaining * BACKGROUND_DEPTH
    return RenderOutput(image=image, depth=depth, opacity=opacity, weights=w, sample_count=bundle.n * bundle.k)


def render_view(
    field: Any,
    K: np.ndarray,
    c2w: np.ndarray,
    height: int,
    width: int,
    *,
    subpixel: int = 1,
    chunk_rays: int | None = None,
    keep_weights: bool = True,
) -> RenderOutput:
    """Render a camera: image [C, H, W], depth [H, W], opacity [H, W], weights [N, k].

    ``subpixel`` f renders f x f rays per pixel and averages them (HD pictures; weights
    then hold the N = H*W*f*f sub-rays). ``chunk_rays`` bounds memory (default
    ``DEFAULT_CHUNK_RAYS``); chunking does not change the result, and the weights of all
    chunks are padded to one k so ``sample_count`` equals an unchunked render's.
    ``keep_weights=False`` (pictures, videos, meshes) drops each chunk's per-sample weights
    once it is composited, so a large render holds one chunk's worth, not N * k floats;
    ``weights`` is then an empty [N, 0] tensor and ``sample_count`` still counts N * k.

    Rays and the box test run on the field's device; off the CPU each chunk's k (a shape)
    comes from the same computation on the host, so nothing waits for the device.
    """
    aabb = field.aabb
    device = aabb.device
    chunk = int(chunk_rays) if chunk_rays else DEFAULT_CHUNK_RAYS
    if chunk < 1:
        raise ValueError("chunk_rays must be >= 1")
    ro, rd = camera_rays(K, c2w, height, width, subpixel, device=device, keep_float64=True)
    t_min, t_max = box_intersect(ro, rd, aabb)
    ro, rd = ro.to(torch.float32), rd.to(torch.float32)
    if compact_samples(device):  # the rays are host data already: read their spans
        spans = (t_max - t_min).numpy()
    else:  # the same geometry on the host, so that nothing waits for the device
        spans = host_spans(K, c2w, height, width, subpixel, host_aabb(field))
    total = ro.shape[0]
    step = float(field.step_size)
    pixels = np.arange(total)
    parts = []
    for s in range(0, total, chunk):
        part = slice(s, s + chunk)
        k = k_for_spans(spans[part], step)
        order = _tile_order(pixels[part], width * int(subpixel)) if device.type == "cpu" else None
        bundle = make_bundle(ro[part], rd[part], t_min[part], t_max[part], step, order, k=k)
        out = _render_bundle(field, bundle)
        if not keep_weights:  # a fresh empty tensor: a view would keep the chunk's storage alive
            out = replace(out, weights=out.weights.new_empty(out.weights.shape[0], 0))
        parts.append(out)
    joined = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    image, depth, opacity = (
        getattr(parts[0], name) if len(parts) == 1 else joined(name) for name in ("image", "depth", "opacity")
    )
    k = max(p.sample_count // p.image.shape[0] for p in parts)
    if not keep_weights:
        weights = image.new_empty(total, 0)
    elif len(parts) == 1:
        weights = parts[0].weights
    else:
        weights = torch.cat([torch.nn.functional.pad(p.weights, (0, k - p.weights.shape[1])) for p in parts])
    f = int(subpixel)
    channels = image.shape[-1]
    image = image.view(height, f, width, f, channels).mean(dim=(1, 3)).permute(2, 0, 1)
    depth = depth.view(height, f, width, f).mean(dim=(1, 3))
    opacity = opacity.view(height, f, width, f).mean(dim=(1, 3))
    return RenderOutput(image=image, depth=depth, opacity=opacity, weights=weights, sample_count=total * k)
