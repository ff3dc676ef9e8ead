"""The gsplat path (``pip install ".[gaussians-cuda]"``): gsplat's CUDA kernels for the same picture.

Used only when ``gsplat`` imports and the field is on CUDA; the plain-torch rasteriser
(:mod:`sjc_plugins.fields.splat_raster`) is the reference it must match. gsplat takes
OpenCV cameras (y down, looking down +z, pixel centres at i + 0.5): the pose and the
intrinsics are converted here. Differences from the reference path: depth is gsplat's
accumulated camera z, not the distance along the ray (they differ by the ray's cosine off
the optical axis), and ``weights`` holds the per-pixel opacity (gsplat does not expose
per-pair weights), so the emptiness loss sees a per-pixel rather than per-splat coverage.
"""

from __future__ import annotations

from typing import Any

import torch
from sjc_plugins.fields.splat_raster import Raster, Splats

from sjc_core.errors import SjcError

GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def import_gsplat() -> tuple[Any, str]:
    """(module, '') when gsplat imports, else (None, why)."""
    try:
        import gsplat  # type: ignore[import-not-found]
    except Exception as exc:  # noqa: BLE001 - any failure (no CUDA toolkit, ABI) means "not usable"
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]
    return gsplat, ""


def choose_backend(requested: str, device: torch.device) -> str:
    """``torch`` or ``gsplat``; forcing gsplat where it cannot run is one line naming the option."""
    if requested == "torch":
        return "torch"
    if requested == "auto" and device.type != "cuda":
        return "torch"
    module, why = import_gsplat()
    if requested == "gsplat":
        if module is None:
            raise SjcError(f"field.backend: 'gsplat' is not importable ({why}); pip install \".[gaussians-cuda]\" "
                           "or set backend = \"auto\"")
        if device.type != "cuda":
            raise SjcError(f"field.backend: 'gsplat' needs a CUDA device, the field is on {device.type}")
        return "gsplat"
    return "gsplat" if module is not None else "torch"


def opencv_camera(K: torch.Tensor, w2c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sjc's K and OpenGL world-to-camera as gsplat's OpenCV K (pixel centres at i + 0.5) and viewmat."""
    flip = GL_TO_CV.to(w2c.device, w2c.dtype)
    viewmat = flip @ w2c
    K_cv = torch.stack([K[0] * K.new_tensor([1.0, -1.0, -1.0]), K[1] * K.new_tensor([1.0, -1.0, -1.0]),
                        K.new_tensor([0.0, 0.0, 1.0])])
    K_cv[0, 2] += 0.5
    K_cv[1, 2] += 0.5
    return K_cv, viewmat


def rasterize_gsplat(
    splats: Splats, K: torch.Tensor, w2c: torch.Tensor, height: int, width: int, near: float, keep_weights: bool
) -> Raster:
    """The same foreground as :func:`splat_raster.rasterize`, from gsplat's kernels."""
    gsplat, why = import_gsplat()
    if gsplat is None:
        raise SjcError(f"field.backend: gsplat is not importable ({why})")
    K_cv, viewmat = opencv_camera(K.float(), w2c.float())
    colors, alphas, meta = gsplat.rasterization(
        means=splats.means,
        quats=splats.quats,
        scales=splats.scales,
        opacities=splats.opacities,
        colors=splats.features,
        viewmats=viewmat[None],
        Ks=K_cv[None],
        width=width,
        height=height,
        near_plane=near,
        render_mode="RGB+D",
        packed=False,
    )
    channels = splats.features.shape[1]
    pixels = height * width
    image = colors[0, :, :, :channels].reshape(pixels, channels)
    depth = colors[0, :, :, channels].reshape(pixels)
    opacity = alphas[0, :, :, 0].reshape(pixels)
    means2d = meta["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    visible = (meta["radii"][0] > 0).reshape(splats.means.shape[0], -1).any(-1)
    return Raster(
        image=image,
        opacity=opacity,
        depth=depth,
        weights=opacity if keep_weights else opacity.new_empty(0),
        means2d=means2d,
        visible=visible,
        pairs=pixels,
    )
