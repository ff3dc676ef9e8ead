"""Field ``gaussians``: N anisotropic 3D Gaussians (3D Gaussian splatting) under SJC.

Each splat has a mean, log scales (standard deviations), a rotation quaternion (w, x, y, z),
an opacity logit and features: the prior's channels (RGB, or latents for latent priors),
with optional degree-1 spherical harmonics. The field renders whole cameras
(``render_camera``, which :func:`sjc_core.render.view.render_view` calls instead of ray
marching) with the rasteriser of :mod:`splat_raster` (or gsplat on CUDA), so the training
step, every estimator, the turntable, ``sjc render --hd`` and the losses work unchanged.
``density``/``features`` at points (a sum of opacity-weighted Gaussians) serve
``sjc export-mesh``. Densification and pruning (:mod:`splat_density`) run from
``after_step``; the parameters change size then, and ``resize_for_state`` lets a checkpoint
of any splat count load (its densification sums are buffers in the state dict, so a
resumed run continues bit for bit).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sjc_plugins.fields.backdrop import (
    backdrop_background,
    plain_backdrop,
    register_backdrop,
)
from sjc_plugins.fields.gaussians_options import GaussianOptions
from sjc_plugins.fields.shading import activate
from sjc_plugins.fields.splat_density import (
    DensityRules,
    apply_rows,
    in_schedule,
    plan_pass,
)
from sjc_plugins.fields.splat_gsplat import choose_backend, rasterize_gsplat
from sjc_plugins.fields.splat_ply import SH_C0, splat_table, write_splat_ply
from sjc_plugins.fields.splat_points import splat_sums
from sjc_plugins.fields.splat_raster import Splats, rasterize, supersampled_intrinsics
from torch import nn

from sjc_core.contracts import BuildContext, RenderOutput
from sjc_core.errors import SjcError
from sjc_core.render.composite import BACKGROUND_DEPTH
from sjc_core.render.rays import camera_rays
from sjc_core.training.optim import reindex_state

SH_C1 = 0.4886025119029199  # degree-1 spherical-harmonic constant
SPLAT_PARAMS = ("means", "log_scales", "quats", "opacity_logits", "features_dc", "features_rest")


class GaussianField(nn.Module):
    """3D Gaussian splats over ``[-box_half, box_half]^3`` (see the module docstring)."""

    plugin_name = "gaussians"

    def __init__(self, options: GaussianOptions, ctx: BuildContext):
        super().__init__()
        if ctx.channels is not None and ctx.channels < 1:
            raise SjcError(f"field.gaussians: channels must be >= 1 (got {ctx.channels})")
        channels = ctx.channels or 3
        self.options = options
        self.channels = channels
        self.seed = int(ctx.seed)
        self.value_range = ctx.value_range
        activation = options.feature_activation
        if activation == "auto":
            activation = "identity" if ctx.value_range is None else "2*sigmoid-1"
        self.activation = activation
        self.backend = choose_backend(options.backend, torch.device(ctx.device))
        generator = torch.Generator().manual_seed(self.seed)
        half = float(options.box_half)
        count = options.init_splats
        reach = options.init_radius * half
        if options.init_shape == "sphere":
            direction = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=-1)
            means = direction * reach * torch.rand(count, 1, generator=generator) ** (1 / 3)
        else:
            means = (torch.rand(count, 3, generator=generator) * 2 - 1) * reach
        self.means = nn.Parameter(means)
        self.log_scales = nn.Parameter(torch.full((count, 3), math.log(options.init_scale * half)))
        self.quats = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(count, 1))
        self.opacity_logits = nn.Parameter(torch.full((count,), math.log(options.init_opacity / (1 - options.init_opacity))))
        self.features_dc = nn.Parameter(torch.zeros(count, channels))
        rest = 3 if options.sh_degree >= 1 else 0
        self.features_rest = nn.Parameter(torch.zeros(count, rest, channels))
        # densification statistics: part of the state dict, so a resumed run continues exactly
        self.register_buffer("grad_sum", torch.zeros(count))
        self.register_buffer("grad_seen", torch.zeros(count))
        size = options.bg_texture_size
        self.bg: nn.Parameter | None = None
        if size > 0:
            self.bg = nn.Parameter(torch.zeros(1, channels, size, size))
        self.register_buffer("aabb", torch.tensor([[-half] * 3, [half] * 3], dtype=torch.float32), persistent=False)
        self.step_size = 2 * half / 128  # the Field contract's; only the mesh tools' probes read it
        self.weight_threshold = 0.0
        backdrop = plain_backdrop(options.background_from_prior, ctx.backdrop, channels, activation)
        register_backdrop(self, backdrop, channels, "cpu")
        self._last_raster: tuple[torch.Tensor, torch.Tensor] | None = None
        self._cap_noted = False

    @property
    def splat_count(self) -> int:
        return int(self.means.shape[0])

    # ---- splat parameters, activated
    def splats(self, camera_centre: torch.Tensor | None = None) -> Splats:
        """The activated splats; colours seen from ``camera_centre`` when there are SH terms."""
        return Splats(
            means=self.means,
            scales=self.log_scales.exp(),
            quats=torch.nn.functional.normalize(self.quats, dim=-1),
            opacities=torch.sigmoid(self.opacity_logits),
            features=activate(self._raw_features(camera_centre), self.activation),
        )

    def _raw_features(self, camera_centre: torch.Tensor | None) -> torch.Tensor:
        raw = self.features_dc
        if self.features_rest.shape[1] and camera_centre is not None:
            x, y, z = torch.nn.functional.normalize(self.means - camera_centre, dim=-1).unbind(-1)
            basis = SH_C1 * torch.stack([-y, z, -x], -1)  # [N, 3], 3DGS's degree-1 order
            raw = raw + (basis[:, :, None] * self.features_rest).sum(1)
        return raw

    # ---- rendering whole cameras (render_view calls this instead of ray marching)
    def render_camera(
        self, K: Any, c2w: Any, height: int, width: int, *, subpixel: int = 1, keep_weights: bool = True
    ) -> RenderOutput:
        """Image [C, H, W], depth and opacity [H, W], per-pair weights, for a camera (see render_view)."""
        device = self.means.device
        f = int(subpixel)
        c2w64 = np.asarray(c2w, dtype=np.float64)
        K_big = supersampled_intrinsics(torch.as_tensor(np.asarray(K, dtype=np.float64)[:3, :3]), f)
        w2c = torch.as_tensor(np.linalg.inv(c2w64), dtype=torch.float32).to(device)
        K_t = K_big.to(torch.float32).to(device)
        centre = torch.as_tensor(c2w64[:3, 3], dtype=torch.float32).to(device)
        splats = self.splats(centre)
        rows, cols = height * f, width * f
        if self.backend == "gsplat":
            raster = rasterize_gsplat(splats, K_t, w2c, rows, cols, self.options.near, keep_weights)
        else:
            raster = rasterize(splats, K_t, w2c, rows, cols, self.options.near, keep_weights)
        if raster.means2d.requires_grad:  # a training render: densification reads its gradient
            self._last_raster = (raster.means2d, raster.visible)
        _, directions = camera_rays(K, c2w64, height, width, f, device=device)
        clear = 1 - raster.opacity
        image = raster.image + clear[:, None] * self.background(directions).to(raster.image.dtype)
        depth = raster.depth + clear * BACKGROUND_DEPTH
        image = image.view(height, f, width, f, -1).mean(dim=(1, 3)).permute(2, 0, 1)
        depth = depth.view(height, f, width, f).mean(dim=(1, 3))
        opacity = raster.opacity.view(height, f, width, f).mean(dim=(1, 3))
        return RenderOutput(image=image, depth=depth, opacity=opacity, weights=raster.weights,
                            sample_count=max(raster.pairs, 1), extras={"splats": self.splat_count})

    # ---- Field contract at points (sjc export-mesh)
    def density(self, points: torch.Tensor) -> torch.Tensor:
        """A volume density at points [N, 3] -> [N]: each splat's Gaussian scaled so that a
        ray through its centre gathers the optical depth -ln(1 - opacity), i.e. the
        splat's own alpha (so the mesh tools' opacity probes see what the renders show)."""
        return self._at_points(points)[0]

    def features(self, points: torch.Tensor) -> torch.Tensor:
        """The density-weighted mean of the splats' colours at points [N, 3] -> [N, C]."""
        total, mixed = self._at_points(points)
        return mixed / total.clamp(min=1e-8)[:, None]

    def _at_points(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        splats = self.splats()
        optical = -torch.log1p(-splats.opacities.clamp(max=0.99))
        splats.opacities = optical / (math.sqrt(2 * math.pi) * splats.scales.mean(-1))
        return splat_sums(splats, points, float(self.options.box_half))

    def background(self, directions: torch.Tensor) -> torch.Tensor:
        return backdrop_background(self, directions, self.aabb.dtype)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """One group per parameter kind, each at ``lr`` times its option's fraction."""
        o = self.options
        groups: list[dict[str, Any]] = [
            {"params": [self.means], "lr": lr * o.means_lr},
            {"params": [self.features_dc, self.features_rest], "lr": lr * o.features_lr},
            {"params": [self.opacity_logits], "lr": lr * o.opacity_lr},
            {"params": [self.log_scales], "lr": lr * o.scales_lr},
            {"params": [self.quats], "lr": lr * o.rotations_lr},
        ]
        if self.bg is not None:
            groups.append({"params": [self.bg], "lr": o.bg_lr})
        return groups

    # ---- densification (the trainer calls this after each optimizer step)
    def after_step(self, step: int, optimizer: torch.optim.Optimizer) -> bool:
        """Gather screen-space gradients; on the schedule's steps densify and prune.

        Returns True when the splats changed (the optimizer's moments were carried along:
        kept splats keep theirs, new ones start at zero). Between passes nothing here reads
        a value back to the host.
        """
        last, self._last_raster = self._last_raster, None
        if last is not None and last[0].grad is not None:
            with torch.no_grad():
                self.grad_sum += torch.linalg.vector_norm(last[0].grad.reshape(self.splat_count, 2), dim=-1)
                self.grad_seen += last[1].to(self.grad_seen.dtype)
        o = self.options
        if not in_schedule(step, o.densify_start, o.densify_stop, o.densify_every):
            return False
        half = float(o.box_half)
        rules = DensityRules(o.grad_threshold, o.split_scale * half, o.prune_opacity, o.prune_scale * half, o.max_splats)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        with torch.no_grad():
            params = {name: getattr(self, name).detach() for name in SPLAT_PARAMS}
            plan = plan_pass(params, self.grad_sum, self.grad_seen, rules, generator)
            for name in SPLAT_PARAMS:
                param = getattr(self, name)
                param.data = apply_rows(param.data, plan, plan.added[name])
                param.grad = None
                reindex_state(optimizer, param, plan.keep, plan.added_count)
            self.grad_sum = torch.zeros_like(self.means[:, 0])
            self.grad_seen = torch.zeros_like(self.means[:, 0])
        if plan.capped and not self._cap_noted:  # once a run: the cap now limits densification
            self._cap_noted = True
            print(f"sjc: note: field.gaussians reached max_splats = {o.max_splats} at step {step}: splats are "
                  "no longer added (pruning goes on); raise field.max_splats for more detail", file=sys.stderr)
        if self.splat_count == 0:
            raise SjcError(
                f"field.gaussians: every splat was pruned at step {step} (opacity below prune_opacity "
                f"{o.prune_opacity:g} or larger than prune_scale); lower field.prune_opacity or raise field.init_opacity"
            )
        return True

    def resize_for_state(self, state: dict[str, torch.Tensor]) -> None:
        """Before ``load_state_dict``: give every per-splat tensor the checkpoint's splat count."""
        for name in (*SPLAT_PARAMS, "grad_sum", "grad_seen"):
            value = state.get(name)
            current = getattr(self, name)
            if value is None or value.dim() != current.dim() or tuple(value.shape[1:]) != tuple(current.shape[1:]):
                continue  # a foreign state: load_field_state names the mismatch
            fresh = current.data.new_zeros(value.shape)
            if isinstance(current, nn.Parameter):
                current.data = fresh
                current.grad = None
            else:
                setattr(self, name, fresh)

    # ---- files at the end of a run
    def export_files(self, folder: Path) -> dict[str, str]:
        """``splats.ply`` (standard 3DGS layout) in ``folder``; returns {"splats": file name}."""
        path = write_splat_ply(Path(folder) / "splats.ply", self.ply_table())
        return {"splats": path.name}

    def ply_table(self) -> np.ndarray:
        """The splats in the 3DGS ``.ply`` layout (see :mod:`splat_ply`).

        Colours: the first three channels mapped to [0, 1] (exact for RGB fields; a false
        colour for latent ones), written as SH DC terms; degree-1 terms are linearised at
        the DC colour (the field's activation is not the viewer's linear SH sum).
        """
        with torch.no_grad():
            dc = self.features_dc.detach().float().cpu()
            unit, slope = self._unit_colour(dc)
            rest = self.features_rest.detach().float().cpu() * slope[:, None, :]  # [N, K, C]
            pad = max(0, 3 - self.channels)
            unit = torch.nn.functional.pad(unit, (0, pad), value=0.5)[:, :3]
            rest = torch.nn.functional.pad(rest, (0, pad))[:, :, :3].permute(0, 2, 1)  # channel-major
            return splat_table(
                means=self.means.detach().cpu().numpy(),
                f_dc=((unit - 0.5) / SH_C0).numpy(),
                f_rest=rest.numpy(),
                opacity_logits=self.opacity_logits.detach().cpu().numpy(),
                log_scales=self.log_scales.detach().cpu().numpy(),
                quats_wxyz=torch.nn.functional.normalize(self.quats.detach(), dim=-1).cpu().numpy(),
            )

    def _unit_colour(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Colours in [0, 1] from raw features, and d(colour)/d(raw)."""
        if self.activation in ("sigmoid", "2*sigmoid-1"):
            unit = torch.sigmoid(raw)
            return unit, unit * (1 - unit)
        low, high = self.value_range if self.value_range is not None else (-1.0, 1.0)
        return ((raw - low) / (high - low)).clamp(0, 1), torch.full_like(raw, 1.0 / (high - low))

    def extra_repr(self) -> str:
        return f"splats={self.splat_count}, channels={self.channels}, backend={self.backend}, activation={self.activation}"
