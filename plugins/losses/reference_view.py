"""The reference-view loss: image-to-3D's anchor. The render at the input picture's camera
should be the picture.

Each call renders the field at the picture's camera (it is attached to the field when the
trainer builds the run: the ``attach`` hook of :class:`sjc_core.contracts.Loss`) and adds

    rgb_weight  * sum (render - target)^2 / 2      (colour)
    mask_weight * sum (opacity - mask)^2 / 2       (silhouette)

times a warm-up factor. The colour target is the picture mapped to the prior's value range
(pixel fields) or the prior's own encoding of it (latent fields: Zero123's VAE latent, via
``prior.encode_rgb``); the silhouette is the alpha channel, or what differs from a plain
background. Sums, not means: the gradient on each rendered value is ``weight * (render -
target)``, the same form as the PAAS gradient ``(render - D) / sigma``, so a weight reads as
the inverse of a noise level and keeps its meaning at any resolution.

The picture and its camera come from the options, or from the prior (``prior.picture`` and
``prior.reference``, which the ``zero123`` prior has) when the options leave them out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sjc_core.contracts import BuildContext, RenderOutput
from sjc_core.errors import SjcError
from sjc_core.render.cameras import intrinsics
from sjc_core.render.rays import camera_rays
from sjc_core.render.spans import box_intersect, host_aabb, k_for_spans
from sjc_core.render.view import render_rays
from sjc_plugins.losses.reference_view_options import WHERE, ReferenceViewOptions
from sjc_plugins.reference_picture import (
    DEFAULT_AZIMUTH,
    DEFAULT_DISTANCE,
    DEFAULT_ELEVATION,
    DEFAULT_FOV,
    Picture,
    ReferenceCamera,
    read_picture,
)


class ReferenceViewLoss:
    """Callable loss; ``attach`` gives it the field to render and the prior's encoding."""

    def __init__(self, options: ReferenceViewOptions, ctx: BuildContext) -> None:
        self.options = options
        self.base_dir = ctx.base_dir
        # The loss's own picture is read (and checked) now: a bad one stops the build at once.
        self.own_picture = options.read(options.image, ctx.base_dir, f"{WHERE}.image") if options.image else None
        self.field: Any = None
        self.camera: ReferenceCamera | None = None
        self.picture: Picture | None = None

    # ------------------------------------------------------------------ set-up
    def attach(self, field: Any, prior: Any, device: torch.device | str) -> None:
        """Take the field to render, and build the targets at the prior's resolution on ``device``."""
        picture = self.own_picture or self._prior_picture(prior)
        self.camera = self._camera(getattr(prior, "reference", None))
        rgb = torch.from_numpy(np.ascontiguousarray(picture.rgb)).permute(2, 0, 1)[None].float()
        if prior.value_range is None:  # a latent field: compare with the prior's encoding of the picture
            encode = getattr(prior, "encode_rgb", None)
            if not callable(encode):
                raise SjcError(
                    f"{WHERE}: the prior {type(prior).__name__} scores latents but cannot encode a picture "
                    "(no encode_rgb); use a pixel prior or zero123"
                )
            target = encode(rgb).float()
            size = int(target.shape[-1])
        else:
            size = int(getattr(prior, "render_resolution", None) or prior.resolution)
            low, high = prior.value_range
            target = low + (high - low) * shrink(rgb, size)
        if int(target.shape[1]) != int(prior.channels):
            raise SjcError(f"{WHERE}: the picture's target has {target.shape[1]} channels, the prior {prior.channels}")
        mask = shrink(torch.from_numpy(np.ascontiguousarray(picture.mask))[None, None].float(), size)
        self.picture, self.field, self.size = picture, field, size
        self.target = target[0].to(device)
        self.mask = mask[0, 0].to(device)
        self._rays(field, device)

    def _rays(self, field: Any, device: torch.device | str) -> None:
        """The picture's rays, their march starting at the near plane; the sample count k is
        known on the host once and for all, so a step never waits for the device."""
        assert self.camera is not None
        self.K = intrinsics(self.camera.fov_deg, self.size, self.size)
        self.c2w = self.camera.c2w()
        near = self.options.near if self.options.near is not None else 0.5 * self.camera.distance
        ro, rd = camera_rays(self.K, self.c2w, self.size, self.size, device="cpu", keep_float64=True)
        t_min, t_max = box_intersect(ro, rd, torch.from_numpy(host_aabb(field)))
        t_min = t_min.clamp(min=near)
        t_max = torch.maximum(t_max, t_min)
        self.near, self.k = near, k_for_spans((t_max - t_min).numpy(), float(field.step_size))
        self.rays = tuple(t.to(device=device, dtype=torch.float32) for t in (ro, rd, t_min, t_max))

    def _prior_picture(self, prior: Any) -> Picture:
        picture = getattr(prior, "picture", None)
        if not isinstance(picture, Picture):
            raise SjcError(f"{WHERE}.image: required: the prior {type(prior).__name__} has no input picture to take")
        if picture.has_alpha:
            return picture
        # Without alpha the silhouette depends on this loss's background options.
        return read_picture(picture.path, "prior.image", self.options.background, self.options.background_tolerance)

    def _camera(self, reference: Any) -> ReferenceCamera:
        """Each of the options, else the prior's reference camera, else the anchors' default."""
        defaults = {
            "elevation_deg": DEFAULT_ELEVATION,
            "azimuth_deg": DEFAULT_AZIMUTH,
            "distance": DEFAULT_DISTANCE,
            "fov_deg": DEFAULT_FOV,
        }
        values = {}
        for name, default in defaults.items():
            own = getattr(self.options, name)
            values[name] = float(own if own is not None else getattr(reference, name, default))
        return ReferenceCamera(**values)

    # ------------------------------------------------------------------ the loss
    def weight_factor(self, progress: float) -> float:
        """The warm-up: ``warmup_start`` at progress 0, rising linearly to 1 at ``warmup_fraction``."""
        o = self.options
        if o.warmup_fraction <= 0.0:
            return 1.0
        ramp = min(1.0, max(0.0, progress) / o.warmup_fraction)
        return o.warmup_start + (1.0 - o.warmup_start) * ramp

    def render_reference(self) -> RenderOutput:
        """The field rendered at the picture's camera (differentiable): image [C, S, S],
        opacity and depth [S, S]; samples nearer than ``near`` to the eye are skipped."""
        if self.field is None:
            raise RuntimeError("the reference-view loss is used before attach(field=..., prior=..., device=...)")
        ro, rd, t_min, t_max = self.rays
        out = render_rays(self.field, ro, rd, t_min, t_max, k=self.k)
        side = self.size
        return RenderOutput(
            image=out.image.t().reshape(-1, side, side),
            depth=out.depth.reshape(side, side),
            opacity=out.opacity.reshape(side, side),
            weights=out.weights,
            sample_count=out.sample_count,
        )

    def __call__(self, render: RenderOutput, progress: float) -> torch.Tensor:
        """Independent of the training render: the picture's own view is rendered here."""
        view = self.render_reference()
        colour = 0.5 * (view.image - self.target.to(view.image.dtype)).square().sum()
        silhouette = 0.5 * (view.opacity - self.mask.to(view.opacity.dtype)).square().sum()
        o = self.options
        return self.weight_factor(progress) * (o.rgb_weight * colour + o.mask_weight * silhouette)


def shrink(pictures: torch.Tensor, size: int) -> torch.Tensor:
    """Square pictures [B, C, S, S] to size x size, antialiased (area-like when shrinking)."""
    if pictures.shape[-1] == size and pictures.shape[-2] == size:
        return pictures
    return F.interpolate(pictures, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def build_reference_view(options: ReferenceViewOptions, ctx: BuildContext) -> ReferenceViewLoss:
    return ReferenceViewLoss(options, ctx)
