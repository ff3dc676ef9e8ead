"""Volume rendering with the reference's conventions: camera rays, slab clipping against the
field's box, fixed-step samples, exclusive transmittance, features only where a sample's
weight passes the field's threshold, a spherical background and depth with the background
at ``BACKGROUND_DEPTH``.

Layout. A bundle of n rays shares one sample count k = int(max(t_max - t_min) / step) + 1,
and sample j of ray r sits at ``t_min[r] + step * j``; it is in the box iff
``step * j < t_max[r] - t_min[r]``. Per-sample tensors are dense and ray-major, [n, k]; the
in-box samples of a ray are a prefix of its row, so a "compact" list of in-box samples
(ray-major, M of them) maps to dense rows through a CSR-style row pointer. The weights
tensor therefore has exactly the reference's n * k entries (out-of-box ones are 0), which is
what the emptiness regulariser averages over.

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

BACKGROUND_DEPTH = 10.0
DEFAULT_CHUNK_RAYS = 8192  # render_view splits bigger images: at most ~0.5 GB of temporaries a chunk


# --------------------------------------------------------------------------- rays


def _camera_rays_f64(
    K: np.ndarray, c2w: np.ndarray, height: int, width: int, subpixel: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Rays in float64 exactly as the reference builds them (numpy, row-major pixels).

    With ``subpixel`` f the image is sampled on an (H*f) x (W*f) lattice of sub-pixel
    centres, ``-0.5 + (i + 0.5) / f`` around each integer pixel centre.
    """
    K = np.asarray(K, dtype=np.float64)[:3, :3]
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape != (4, 4) or c2w[3, 3] != 1.0:
        raise ValueError("c2w must be a 4x4 camera-to-world matrix with c2w[3, 3] == 1")
    f = int(subpixel)
    if f < 1:
        raise ValueError("subpixel must be >= 1")
    rows, cols = height * f, width * f
    ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    xy = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float64)
    if f > 1:
        xy = (-0.5 + 1.0 / (2 * f)) + xy / f
    pix = np.concatenate([xy, np.ones((len(xy), 1))], axis=1)  # homogeneous pixel coords
    cam = (np.linalg.inv(K) @ pix.T).T  # depth 1 on the camera's -z side
    cam = np.concatenate([cam, np.ones((len(cam), 1))], axis=1)
    origin = c2w[:, -1]
    rd = (cam @ c2w.T - origin)[:, :3]
    rd = rd / np.linalg.norm(rd, axis=-1, keepdims=True)
    ro = np.tile(origin[:3], (len(rd), 1))
    return ro, rd


def _box_intersect_f64(ro: np.ndarray, rd: np.ndarray, aabb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test in float64; a zero direction component becomes 1e-6; t clamped at 0."""
    rd = rd.copy()
    rd[rd == 0] = 1e-6
    bounds = np.asarray(aabb, dtype=np.float64).T  # [3, 2]: (min, max) per axis
    ts = (bounds[None] - ro[:, :, None]) / rd[:, :, None]  # [n, 3, 2]
    near, far = np.minimum(ts[..., 0], ts[..., 1]), np.maximum(ts[..., 0], ts[..., 1])  # [n, 3]
    t_min = np.maximum(np.maximum(near[:, 0], near[:, 1]), near[:, 2])
    t_max = np.minimum(np.minimum(far[:, 0], far[:, 1]), far[:, 2])
    return np.maximum(t_min, 0.0), np.maximum(t_max, 0.0)


def camera_rays(
    K: np.ndarray, c2w: np.ndarray, height: int, width: int, subpixel: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions, float32 [N, 3], N = (height*f) * (width*f), row-major.

    Computed in float64 like the reference, then rounded once.
    """
    ro, rd = _camera_rays_f64(K, c2w, height, width, subpixel)
    return torch.from_numpy(ro.astype(np.float32)), torch.from_numpy(rd.astype(np.float32))


def _float64(x: Any) -> np.ndarray:
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, np.float64)


def box_intersect(ro: torch.Tensor, rd: torch.Tensor, aabb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances (float32 [N], clamped at 0) of rays against the box ``aabb``.

    A ray that misses the box gets t_max <= t_min, hence no in-box samples. The test runs in
    float64 on whatever precision the rays carry.
    """
    t_min, t_max = _box_intersect_f64(_float64(ro), _float64(rd), _float64(aabb))
    device = ro.device if torch.is_tensor(ro) else torch.device("cpu")
    return (
        torch.from_numpy(t_min.astype(np.float32)).to(device),
        torch.from_numpy(t_max.astype(np.float32)).to(device),
    )


# --------------------------------------------------------------------------- sample layout


@dataclass
class SampleBundle:
    """The sample layout of one ray bundle (see the module docstring).

    ``counts[r]`` in-box samples for ray r; ``starts[r]`` is where ray r's samples begin in
    the compact (ray-major) list of ``total`` in-box samples. ``order``, when set, is a
    permutation of the rays that a fused implementation may process them in for memory
    locality (neighbouring pixels together); outputs are always in ray order.
    """

    ro: torch.Tensor  # [n, 3] float32
    rd: torch.Tensor  # [n, 3] float32
    t_min: torch.Tensor  # [n] float32
    t_max: torch.Tensor  # [n] float32
    step: float
    k: int
    ticks: torch.Tensor  # [k] float32, step * j
    counts: np.ndarray  # [n] int64
    starts: np.ndarray  # [n] int64
    total: int
    order: np.ndarray | None = None  # a permutation of the rays to process them in (locality only)

    @property
    def n(self) -> int:
        return int(self.ro.shape[0])

    @property
    def device(self) -> torch.device:
        return self.ro.device

    @cached_property
    def t_dense(self) -> torch.Tensor:
        """Sample distances [n, k] (also beyond the box; those samples carry no weight)."""
        return self.t_min[:, None] + self.ticks[None, :]

    @cached_property
    def inbox(self) -> torch.Tensor:
        """Bool [n, k]: which samples lie in the box."""
        counts = torch.from_numpy(self.counts).to(self.device)
        return torch.arange(self.k, device=self.device)[None, :] < counts[:, None]

    @cached_property
    def ray_ids(self) -> np.ndarray:
        """Ray of each in-box sample [M] (int64, ray-major order)."""
        return np.repeat(np.arange(self.n, dtype=np.int64), self.counts)

    @cached_property
    def sample_ids(self) -> np.ndarray:
        """Index j along its ray of each in-box sample [M] (int64)."""
        return np.arange(self.total, dtype=np.int64) - np.repeat(self.starts, self.counts)

    @cached_property
    def positions(self) -> torch.Tensor:
        """Dense flat index r * k + j of each in-box sample [M] (int64)."""
        return torch.from_numpy(self.ray_ids * self.k + self.sample_ids).to(self.device)

    @cached_property
    def row_pointer(self) -> np.ndarray:
        """[n*k + 1] int64: number of in-box samples before each dense position (a CSR row
        pointer from dense rows to the compact list; out-of-box rows are empty)."""
        j = np.arange(self.k, dtype=np.int64)[None, :]
        ptr = np.empty(self.n * self.k + 1, dtype=np.int64)
        ptr[:-1] = (np.minimum(j, self.counts[:, None]) + self.starts[:, None]).reshape(-1)
        ptr[-1] = self.total
        return ptr

    def repeat_per_ray(self, values: torch.Tensor) -> torch.Tensor:
        """Per-ray values [c, n] repeated for each in-box sample -> [c, M]."""
        if values.device.type == "cpu":
            return torch.from_numpy(np.repeat(values.detach().numpy(), self.counts, axis=1))
        counts = torch.from_numpy(self.counts).to(values.device)
        return torch.repeat_interleave(values, counts, dim=1)

    @cached_property
    def t_inbox(self) -> torch.Tensor:
        """Distance of each in-box sample [M] float32 (t_min + step * j, as the reference)."""
        t_min = self.repeat_per_ray(self.t_min[None])[0]
        return t_min + self.ticks[torch.from_numpy(self.sample_ids).to(self.device)]

    def points(self) -> torch.Tensor:
        """World positions of the in-box samples [M, 3], ro + rd * t like the reference."""
        rays = self.repeat_per_ray(torch.cat([self.ro, self.rd], dim=1).t())  # [6, M]
        return (rays[:3] + rays[3:] * self.t_inbox[None, :]).t()


def make_bundle(
    ro: torch.Tensor,
    rd: torch.Tensor,
    t_min: torch.Tensor,
    t_max: torch.Tensor,
    step: float,
    order: np.ndarray | None = None,
) -> SampleBundle:
    """Sample layout with the reference's k: int(float32(max span) / float32(step)) + 1."""
    span = t_max - t_min
    n = int(ro.shape[0])
    step32 = torch.tensor(step, dtype=torch.float32)
    max_span = span.max().cpu() if n else torch.tensor(0.0)
    k = int((max_span / step32).item()) + 1
    ticks = step * torch.arange(k, device=ro.device)  # float32, as the reference
    counts = np.searchsorted(ticks.cpu().numpy(), span.detach().cpu().numpy(), side="left").astype(np.int64)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return SampleBundle(
        ro=ro, rd=rd, t_min=t_min, t_max=t_max, step=float(step), k=k, ticks=ticks,
        counts=counts, starts=starts, total=int(counts.sum()), order=order,
    )


# --------------------------------------------------------------------------- weights


def weights_forward(sigma: torch.Tensor, step: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """alpha = 1 - exp(-sigma*step), exclusive transmittance, w = alpha * T (reference order).

    Returns (w, alpha, inclusive transmittance) for the analytic backward.
    """
    alpha = 1 - torch.exp(-sigma * step)
    inclusive = torch.cumprod(1 - alpha, dim=1)
    exclusive = torch.ones_like(inclusive)
    exclusive[:, 1:] = inclusive[:, :-1]
    return alpha * exclusive, alpha, inclusive


def weights_backward(
    grad_w: torch.Tensor, w: torch.Tensor, inclusive: torch.Tensor, step: float
) -> torch.Tensor:
    """dL/dsigma from dL/dw along each ray (rows of [n, k]).

    With T_j = exp(-step * sum_{i<j} sigma_i): dw_j/dsigma_j = step * T_{j+1} and
    dw_i/dsigma_j = -step * w_i for i > j, so
    dL/dsigma_j = step * (g_j * T_{j+1} - sum_{i>j} g_i w_i).
    """
    gw = grad_w * w
    later = torch.flip(torch.cumsum(torch.flip(gw, [1]), dim=1), [1]) - gw  # sum over i > j
    return (grad_w * inclusive - later) * step


class VolumeWeights(torch.autograd.Function):
    """Per-sample weights from densities [n, k] with an analytic backward (cumprod's
    autograd backward is slow and divides by 1 - alpha)."""

    @staticmethod
    def forward(ctx: Any, sigma: torch.Tensor, step: float) -> torch.Tensor:  # type: ignore[override]
        w, _, inclusive = weights_forward(sigma, step)
        ctx.save_for_backward(w, inclusive)
        ctx.step = step
        return w

    @staticmethod
    def backward(ctx: Any, grad_w: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        w, inclusive = ctx.saved_tensors
        return weights_backward(grad_w, w, inclusive, ctx.step), None


# --------------------------------------------------------------------------- compositing


def _generic_foreground(field: Any, bundle: SampleBundle) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground features [n, C] and weights [n, k] through the plain Field contract."""
    n, k = bundle.n, bundle.k
    pos = bundle.positions
    points = bundle.points()
    sigma_in = field.density(points)
    sigma = torch.zeros(n * k, dtype=sigma_in.dtype, device=sigma_in.device)
    sigma = sigma.index_put((pos,), sigma_in).view(n, k)
    w = VolumeWeights.apply(sigma, bundle.step)
    keep = (w.detach() > field.weight_threshold).view(-1)
    keep_pos = keep.nonzero().squeeze(1)
    ptr = torch.from_numpy(bundle.row_pointer[:-1]).to(keep_pos.device)
    feats = field.features(points[ptr[keep_pos]])
    channels = feats.shape[-1]
    dense = torch.zeros(n * k, channels, dtype=feats.dtype, device=feats.device)
    dense = dense.index_put((keep_pos,), feats).view(n, k, channels)
    rgb = torch.bmm(w[:, None, :], dense).squeeze(1)
    return rgb, w


def render_rays(
    field: Any,
    ro: torch.Tensor,
    rd: torch.Tensor,
    t_min: torch.Tensor | None = None,
    t_max: torch.Tensor | None = None,
) -> RenderOutput:
    """Render a flat bundle: image [N, C], depth [N], opacity [N], weights [N, k].

    ``t_min``/``t_max`` default to the intersection with ``field.aabb`` (clamped at 0).
    Rays that miss the box show the background only, at depth ``BACKGROUND_DEPTH``.
    """
    if t_min is None or t_max is None:
        t_min, t_max = box_intersect(ro, rd, field.aabb)
    return _render_bundle(field, make_bundle(ro, rd, t_min, t_max, float(field.step_size)))


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
    return RenderOutput(
        image=image, depth=depth, opacity=opacity, weights=w, sample_count=int(w.shape[0] * w.shape[1])
    )


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
    """
    aabb = field.aabb
    device = aabb.device
    ro64, rd64 = _camera_rays_f64(K, c2w, height, width, subpixel)
    t_min64, t_max64 = _box_intersect_f64(ro64, rd64, aabb.detach().cpu().double().numpy())
    tensor = lambda a: torch.from_numpy(a.astype(np.float32)).to(device)  # noqa: E731
    ro, rd, t_min, t_max = tensor(ro64), tensor(rd64), tensor(t_min64), tensor(t_max64)
    total = ro.shape[0]
    chunk = int(chunk_rays) if chunk_rays else DEFAULT_CHUNK_RAYS
    if chunk < 1:
        raise ValueError("chunk_rays must be >= 1")
    step = float(field.step_size)
    pixels = np.arange(total)
    parts = []
    for s in range(0, total, chunk):
        part = slice(s, s + chunk)
        order = _tile_order(pixels[part], width * int(subpixel))
        bundle = make_bundle(ro[part], rd[part], t_min[part], t_max[part], step, order)
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
    return RenderOutput(
        image=image,
        depth=depth,
        opacity=opacity,
        weights=weights,
        sample_count=total * k,
    )
