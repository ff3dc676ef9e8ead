"""Stage 5: composite a bundle: the field's densities and features at the samples, the
weights (stage 4, :mod:`sjc_core.render.weights`), then features, background and depth.

Any :class:`~sjc_core.contracts.Field` renders through ``density``/``features``/``background``
(features only where a sample's weight passes the field's threshold, as the reference). A
field may also provide ``render_foreground(bundle)``, a fused implementation of the same
integral; the voxel field does. Depth puts the background at ``BACKGROUND_DEPTH``.
"""

from __future__ import annotations

from typing import Any

import torch

from sjc_core.contracts import RenderOutput
from sjc_core.render.samples import SampleBundle
from sjc_core.render.weights import VolumeWeights

BACKGROUND_DEPTH = 10.0


def generic_foreground(field: Any, bundle: SampleBundle) -> tuple[torch.Tensor, torch.Tensor]:
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


def render_bundle(field: Any, bundle: SampleBundle) -> RenderOutput:
    """Foreground (fused or generic), then background and depth; flat outputs."""
    rd = bundle.rd
    fused = getattr(field, "render_foreground", None)
    result = fused(bundle) if fused is not None else None
    rgb, w, *sums = result if result is not None else generic_foreground(field, bundle)
    opacity, depth = sums if sums else (w.sum(dim=1), (w * bundle.t_dense).sum(dim=1))
    remaining = 1 - opacity
    image = rgb + remaining[:, None] * field.background(rd)
    depth = depth + remaining * BACKGROUND_DEPTH
    return RenderOutput(image=image, depth=depth, opacity=opacity, weights=w, sample_count=bundle.n * bundle.k)
