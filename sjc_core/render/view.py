"""The render entry points: a flat bundle of rays (:func:`render_rays`) or a camera
(:func:`render_view`), each running the stages in order: rays -> spans -> samples ->
composite (field and weights).

Everything after the camera pose runs on the field's device as torch operations; the only
numbers the host needs are shapes (each chunk's k), computed from host data.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from sjc_core.contracts import RenderOutput
from sjc_core.errors import SjcError
from sjc_core.render import composite, rays, samples, spans

DEFAULT_CHUNK_RAYS = 8192  # render_view splits bigger images: at most ~0.5 GB of temporaries a chunk


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
    if callable(getattr(field, "render_camera", None)):
        name = getattr(field, "plugin_name", type(field).__name__)
        raise SjcError(
            f"the {name} field renders whole cameras; rendering separate rays "
            "(sjc fit, the reference-view loss) is not supported"
        )
    if t_min is None or t_max is None:
        t_min, t_max = spans.box_intersect(ro, rd, field.aabb)
    return composite.render_bundle(field, samples.make_bundle(ro, rd, t_min, t_max, float(field.step_size), k=k))


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

    A field with ``render_camera`` (see :class:`sjc_core.contracts.Field`) renders the
    camera itself; ``chunk_rays`` does not apply to it.

    Rays and the box test run on the field's device; off the CPU each chunk's k (a shape)
    comes from the same computation on the host, so nothing waits for the device.
    """
    render_camera = getattr(field, "render_camera", None)
    if callable(render_camera):  # a field that renders whole cameras (splats): no ray marching
        return render_camera(K, c2w, height, width, subpixel=subpixel, keep_weights=keep_weights)
    aabb = field.aabb
    device = aabb.device
    chunk = int(chunk_rays) if chunk_rays else DEFAULT_CHUNK_RAYS
    if chunk < 1:
        raise ValueError("chunk_rays must be >= 1")
    ro, rd = rays.camera_rays(K, c2w, height, width, subpixel, device=device, keep_float64=True)
    t_min, t_max = spans.box_intersect(ro, rd, aabb)
    ro, rd = ro.to(torch.float32), rd.to(torch.float32)
    if samples.compact_samples(device):  # the rays are host data already: read their spans
        ray_spans = (t_max - t_min).numpy()
    else:  # the same geometry on the host, so that nothing waits for the device
        ray_spans = spans.host_spans(K, c2w, height, width, subpixel, spans.host_aabb(field))
    total = ro.shape[0]
    step = float(field.step_size)
    pixels = np.arange(total)
    parts = []
    for s in range(0, total, chunk):
        part = slice(s, s + chunk)
        k = spans.k_for_spans(ray_spans[part], step)
        order = samples.tile_order(pixels[part], width * int(subpixel)) if device.type == "cpu" else None
        bundle = samples.make_bundle(ro[part], rd[part], t_min[part], t_max[part], step, order, k=k)
        out = composite.render_bundle(field, bundle)
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
