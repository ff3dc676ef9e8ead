"""A differentiable Gaussian-splat rasteriser in plain PyTorch (the reference path, any device).

Tile-free and sparse: each visible splat is paired with the pixels of the box around the
ellipse where its alpha reaches 1/255 (3DGS's cut; about 3 sigma for opaque splats), the
pairs are ordered by pixel and, within a pixel, front to back (splats are sorted by depth
first and a stable sort keeps that order), and each pixel's transmittance is a segmented
cumulative sum of ``log(1 - alpha)`` (in float64, so long pixel lists lose nothing). The
work and memory are proportional to the number of (splat, pixel) pairs, not splats x pixels.

Camera convention (sjc's, ``sjc_core.render.cameras``): OpenGL camera-to-world poses, y up,
the camera looks down -z, and ``K`` maps camera points to homogeneous pixels with pixel
centres at integer (col, row). A splat's mean projects with ``K @ (w2c @ p)``, exactly where
the ray of :func:`sjc_core.render.rays.camera_rays` through that point lands; its 2D
covariance is the EWA approximation ``J W Sigma W^T J^T`` with ``J`` the Jacobian of that
projection, plus a 0.3 px^2 low-pass (as in 3D Gaussian splatting).

The shapes here depend on the data (which splats are visible, how many pairs): on CUDA the
``gsplat`` kernels (:mod:`sjc_plugins.fields.splat_gsplat`) are the fast path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

ALPHA_MIN = 1.0 / 255.0  # pairs fainter than this are dropped (3DGS's cut)
ALPHA_MAX = 0.99  # no single splat makes a pixel fully opaque (keeps log(1 - alpha) finite)
TRANSMITTANCE_MIN = 1e-4  # early termination: splats behind this much coverage add nothing
LOW_PASS = 0.3  # px^2 added to every 2D covariance: a splat covers at least about a pixel


@dataclass
class Splats:
    """Activated splat parameters: means [N, 3], scales (std) [N, 3], unit quaternions
    (w, x, y, z) [N, 4], opacities in (0, 1) [N] and features [N, C]."""

    means: torch.Tensor
    scales: torch.Tensor
    quats: torch.Tensor
    opacities: torch.Tensor
    features: torch.Tensor


@dataclass
class Raster:
    """A rasterised foreground over P = height * width pixels (no background yet).

    ``weights`` holds each kept (splat, pixel) pair's contribution ``alpha * T``;
    ``means2d`` [N, 2] are the projected means (pixels), kept for their gradient when the
    splats require one (densification reads it); ``visible`` [N] marks the drawn splats.
    """

    image: torch.Tensor  # [P, C]
    opacity: torch.Tensor  # [P]
    depth: torch.Tensor  # [P], sum of weight * distance from the camera
    weights: torch.Tensor  # [pairs]
    means2d: torch.Tensor
    visible: torch.Tensor
    pairs: int


def quaternion_matrices(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N, 3, 3] of unit quaternions (w, x, y, z) [N, 4]."""
    w, x, y, z = quats.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, -1).view(-1, 3, 3)


def covariances(scales: torch.Tensor, quats: torch.Tensor) -> torch.Tensor:
    """World covariances [N, 3, 3] = R diag(s^2) R^T."""
    half = quaternion_matrices(quats) * scales[:, None, :]
    return half @ half.transpose(1, 2)


def project(
    means: torch.Tensor, cov3: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, near: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel positions [N, 2], 2D covariances [N, 2, 2], distances [N] and in-front mask [N].

    ``w`` (the homogeneous pixel coordinate) is the depth in front of the camera for sjc's
    K (third row [0, 0, -1]); splats with ``w <= near`` are marked not in front.
    """
    rotation, translation = w2c[:3, :3], w2c[:3, 3]
    cam = means @ rotation.t() + translation
    homogeneous = cam @ K.t()
    w = homogeneous[:, 2]
    front = w > near
    w_safe = torch.where(front, w, torch.full_like(w, near))
    uv = homogeneous[:, :2] / w_safe[:, None]
    # d(u, v)/d(cam): rows (K[i] - uv_i * K[2]) / w (the quotient rule of K p / (K[2] . p))
    jacobian = (K[None, :2, :] - uv[:, :, None] * K[None, 2:3, :]) / w_safe[:, None, None]
    to_pixels = jacobian @ rotation  # world -> pixels, [N, 2, 3]
    cov2 = to_pixels @ cov3 @ to_pixels.transpose(1, 2)
    cov2 = cov2 + LOW_PASS * torch.eye(2, dtype=cov2.dtype, device=cov2.device)
    distance = torch.linalg.vector_norm(cam, dim=-1)
    return uv, cov2, distance, front


def rasterize(
    splats: Splats,
    K: torch.Tensor,
    w2c: torch.Tensor,
    height: int,
    width: int,
    near: float = 0.05,
    keep_weights: bool = True,
) -> Raster:
    """Alpha-composite the splats front to back into a height x width picture (see module doc)."""
    means = splats.means
    device, dtype = means.device, means.dtype
    channels = splats.features.shape[1]
    pixels = height * width
    uv, cov2, distance, front = project(means, covariances(splats.scales, splats.quats), K, w2c, near)
    if uv.requires_grad:
        uv.retain_grad()
    a, b, c = cov2[:, 0, 0], cov2[:, 0, 1], cov2[:, 1, 1]
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conic_a, conic_b, conic_c = c / det_safe, -b / det_safe, a / det_safe

    with torch.no_grad():  # which pixels each splat may touch: host-side bookkeeping, no gradient
        # alpha = o exp(-m/2) >= ALPHA_MIN exactly inside the Mahalanobis radius sqrt(2 ln(o / ALPHA_MIN)):
        # the axis-aligned box of that ellipse holds every pair that can count, and no more
        sigmas = torch.sqrt(2 * torch.log(torch.clamp(splats.opacities / ALPHA_MIN, min=1.0)))
        radius_x, radius_y = sigmas * torch.sqrt(a.clamp(min=0)), sigmas * torch.sqrt(c.clamp(min=0))
        x0 = torch.ceil(uv[:, 0] - radius_x).clamp(min=0)
        x1 = torch.floor(uv[:, 0] + radius_x).clamp(max=width - 1)
        y0 = torch.ceil(uv[:, 1] - radius_y).clamp(min=0)
        y1 = torch.floor(uv[:, 1] + radius_y).clamp(max=height - 1)
        finite = torch.isfinite(uv).all(-1) & torch.isfinite(radius_x) & torch.isfinite(radius_y)
        visible = front & (det > 0) & finite & (x0 <= x1) & (y0 <= y1) & (splats.opacities >= ALPHA_MIN)
        ids = visible.nonzero().squeeze(1)
        ids = ids[torch.argsort(distance[ids], stable=True)]  # front to back
        box_w = (x1 - x0 + 1)[ids].long()
        box_h = (y1 - y0 + 1)[ids].long()
        sizes = box_w * box_h
        pair_splat = torch.repeat_interleave(ids, sizes)
        starts = torch.cumsum(sizes, 0) - sizes
        local = torch.arange(pair_splat.shape[0], device=device) - torch.repeat_interleave(starts, sizes)
        pair_w = torch.repeat_interleave(box_w, sizes)
        px = torch.repeat_interleave(x0[ids].long(), sizes) + local % pair_w
        py = torch.repeat_interleave(y0[ids].long(), sizes) + local // pair_w

        # Which pairs count, from detached values (one gather of a small per-splat table).
        table = torch.stack([uv[:, 0], uv[:, 1], conic_a, conic_b, conic_c, splats.opacities], 1).detach()
        alpha = _pair_alpha(table.index_select(0, pair_splat).unbind(1), px.to(dtype), py.to(dtype))
        kept = (alpha >= ALPHA_MIN).nonzero().squeeze(1)
        pixel = (py * width + px)[kept]
        order = torch.argsort(pixel, stable=True)  # by pixel; within one, still front to back
        kept, pixel = kept[order], pixel[order]
        splat = pair_splat[kept]
        px, py = px[kept].to(dtype), py[kept].to(dtype)
        per_pixel = torch.bincount(pixel, minlength=pixels)
        first = (torch.cumsum(per_pixel, 0) - per_pixel)[pixel]  # each pair's pixel's first pair

    # The kept pairs again, with gradients: one gather of every per-splat value they need.
    # (unbind, not slices: its backward is one stack, where each slice's would fill a zero copy)
    table = torch.stack([uv[:, 0], uv[:, 1], conic_a, conic_b, conic_c, splats.opacities, distance], 1)
    *shape, splat_distance = table.index_select(0, splat).unbind(1)
    features = splats.features.index_select(0, splat)
    alpha = _pair_alpha(shape, px, py)
    log_clear = torch.log1p(-alpha.double())
    before = torch.cumsum(log_clear, 0) - log_clear  # exclusive running sum over all pairs
    transmittance = torch.exp(before - before[first]).to(dtype)
    weight = alpha * transmittance * (transmittance > TRANSMITTANCE_MIN).to(dtype)

    image = torch.zeros(pixels, channels, dtype=dtype, device=device)
    image = image.index_add(0, pixel, weight[:, None] * features)
    opacity = torch.zeros(pixels, dtype=dtype, device=device).index_add(0, pixel, weight)
    depth = torch.zeros(pixels, dtype=dtype, device=device).index_add(0, pixel, weight * splat_distance)
    return Raster(
        image=image,
        opacity=opacity,
        depth=depth,
        weights=weight if keep_weights else weight.new_empty(0),
        means2d=uv,
        visible=visible,
        pairs=int(weight.shape[0]),
    )


def _pair_alpha(values: Sequence[torch.Tensor], px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Each pair's alpha from its splat's u, v, conic a, b, c and opacity (each [M]) and its
    pixel (a positive exponent only comes from rounding: it is cut at 0)."""
    u, v, a, b, c, opacity = values[:6]
    dx, dy = px - u, py - v
    power = torch.clamp(-0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy, max=0.0)
    return torch.clamp(opacity * torch.exp(power), max=ALPHA_MAX)


def supersampled_intrinsics(K: torch.Tensor, factor: int) -> torch.Tensor:
    """K for the (H*f) x (W*f) lattice of sub-pixel centres that ``camera_rays`` uses with
    ``subpixel`` f: big-image pixel j sits at original coordinate (j + 0.5) / f - 0.5."""
    if factor == 1:
        return K
    shift = (factor - 1) / 2.0
    rows = [factor * K[0] + shift * K[2], factor * K[1] + shift * K[2], K[2]]
    return torch.stack(rows)
