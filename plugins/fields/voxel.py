"""The dense voxel field of the reference (``V_SD`` / ``V_SJC``), with fast render paths.

Parameters: ``density_grid`` [Z, Y, X] (raw density), ``feature_grid`` [Z, Y, X, C] (raw
features, channels last so a corner's channels are adjacent), ``d_scale`` and the spherical
background texture ``bg`` [1, C, h, w]. Values sit at voxel centres
(``align_corners=False``) with zero padding: within half a voxel of a face they fade to 0.
Density is ``softplus(raw * exp(d_scale) + density_shift)``; features (and the background)
go through the activation: identity for latents, ``2*sigmoid-1`` for pixel priors.

Render paths (option ``backend``), all equal to the generic Field-contract path:

* ``native`` (default when a C compiler is present): a compiled per-ray kernel
  (:mod:`sjc_plugins.fields._voxel_native`) marches each ray once forward and once backward,
  with the analytic gradient of the weights; no per-sample temporaries beyond what the
  backward reads.
* ``torch``: the same node from torch operations on the grids' device
  (:mod:`sjc_plugins.fields._voxel_torch`): what CUDA runs, and the CPU without a compiler.
* ``generic``: ``density``/``features`` through autograd (for checking).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from sjc_core.contracts import BuildContext
from sjc_core.errors import SjcError
from sjc_core.render.samples import SampleBundle
from sjc_plugins.fields._voxel_native import NativeVoxelRender, kernel_or_reason, native_plan
from sjc_plugins.fields._voxel_torch import TorchVoxelRender, torch_plan
from sjc_plugins.fields.backdrop import backdrop_background, plain_backdrop, register_backdrop
from sjc_plugins.fields.shading import activate, background_lookup
from sjc_plugins.fields.trilinear import TrilinearGather, trilinear_corners
from sjc_plugins.fields.voxel_options import (  # noqa: F401 (re-exported: the options live there)
    MAX_GRID_SIDE,
    MAX_VOXELS,
    Activation,
    Backend,
    VoxelOptions,
    check_grid_size,
    check_ray_samples,
    grid_xyz,
)

# --------------------------------------------------------------------------- the field


class VoxelField(torch.nn.Module):
    """Dense voxel radiance field over [-box_half, box_half]^3 (see the module docstring)."""

    def __init__(
        self,
        options: VoxelOptions,
        channels: int,
        value_range: tuple[float, float] | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        backdrop: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        self.options = options
        self.channels = int(channels)
        activation = options.feature_activation
        if activation == "auto":
            activation = "identity" if value_range is None else "2*sigmoid-1"
        self.activation: str = activation
        self.density_shift = float(options.density_shift)
        self.weight_threshold = float(options.weight_threshold)
        half = float(options.box_half)
        self.register_buffer(
            "aabb", torch.tensor([[-half] * 3, [half] * 3], dtype=torch.float32, device=device), persistent=False
        )
        self.grid_size = grid_xyz(options.grid_size)
        self.backend = self._resolve_backend(options.backend, torch.device(device))
        self._step_size = self._host_step_size()
        X, Y, Z = self.grid_size
        gen = torch.Generator().manual_seed(int(seed))
        std = float(options.init_features)

        def normal(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen) * std if std > 0 else torch.zeros(*shape)

        backdrop = plain_backdrop(options.background_from_prior, backdrop, self.channels, self.activation)
        self.density_grid = torch.nn.Parameter(torch.full((Z, Y, X), float(options.init_density)).to(device))
        self.feature_grid = torch.nn.Parameter(normal(Z, Y, X, self.channels).to(device))
        self.d_scale = torch.nn.Parameter(torch.tensor(0.0, device=device))
        size = options.bg_texture_size
        self.bg: torch.nn.Parameter | None = (
            torch.nn.Parameter(normal(1, self.channels, size, size).to(device)) if size > 0 else None
        )
        register_backdrop(self, backdrop, self.channels, device)

    @staticmethod
    def _resolve_backend(choice: str, device: torch.device) -> str:
        if choice in ("torch", "generic"):
            return choice
        lib, reason = kernel_or_reason() if device.type == "cpu" else (None, "the kernel runs on CPU only")
        if lib is not None:
            return "native"
        if choice == "native":
            raise SjcError(f"field.backend: the native kernel is unavailable: {reason}")
        return "torch"

    # ---- geometry
    @property
    def step_size(self) -> float:
        """The reference's step: mean voxel length (float32) times step_ratio, as a float.

        Worked out on the host when the grid is made or resized, so reading it in a
        training step never waits for a device."""
        return self._step_size

    def _host_step_size(self) -> float:
        half = torch.tensor(float(self.options.box_half), dtype=torch.float32)
        lengths = (half - -half) / torch.tensor(self.grid_size, dtype=torch.float32)
        return float((lengths.mean() * self.options.step_ratio).item())

    def _voxels_per_axis(self, like: torch.Tensor) -> torch.Tensor:
        """The grid size (x, y, z) as a tensor on ``like``'s device, made without a host copy."""
        X, Y, Z = self.grid_size
        return torch.stack([torch.full((), float(v), dtype=like.dtype, device=like.device) for v in (X, Y, Z)])

    def voxel_coords(self, points: torch.Tensor) -> torch.Tensor:
        """World points [N, 3] -> continuous voxel indices [3, N] (voxel i's centre at i),
        computed like grid_sample(align_corners=False) does."""
        lo, hi = self.aabb[0], self.aabb[1]
        size = self._voxels_per_axis(points)
        q = (points - lo) / (hi - lo) * 2 - 1
        return (((q + 1) * size - 1) / 2).t().contiguous()

    def _gather(self, table: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Trilinear values [N, channels] of a grid parameter [Z, Y, X(, channels)] at world points."""
        corners = trilinear_corners(self.voxel_coords(points.to(device=table.device, dtype=table.dtype)), self.grid_size)
        X, Y, Z = self.grid_size
        return TrilinearGather.apply(table.reshape(X * Y * Z, -1), corners)

    # ---- Field contract
    def density(self, points: torch.Tensor) -> torch.Tensor:
        raw = self._gather(self.density_grid, points)[:, 0]
        return F.softplus(raw * torch.exp(self.d_scale) + self.density_shift)

    def features(self, points: torch.Tensor) -> torch.Tensor:
        return activate(self._gather(self.feature_grid, points), self.activation)

    def background(self, directions: torch.Tensor) -> torch.Tensor:
        return backdrop_background(self, directions, self.feature_grid.dtype)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Grids and density scale at ``lr``, the background texture at ``bg_lr`` (as the reference)."""
        groups: list[dict[str, Any]] = [{"params": [self.density_grid, self.feature_grid, self.d_scale], "lr": lr}]
        if self.bg is not None:
            groups.append({"params": [self.bg], "lr": self.options.bg_lr})
        return groups

    # ---- fast path
    def render_foreground(self, bundle: SampleBundle) -> tuple[torch.Tensor, ...] | None:
        """Fused foreground integral: features [n, C] and weights [n, k], and from the native
        kernel also opacity [n] and depth [n] (equals the generic path; None declines, for the
        ``generic`` backend)."""
        if self.backend == "generic":
            return None
        device = self.density_grid.device
        lo = self.aabb[0]
        scale = self._voxels_per_axis(self.aabb) / (self.aabb[1] - lo)
        org = (bundle.ro - lo) * scale - 0.5  # ray origin and direction in voxel units
        direction = bundle.rd * scale
        native = self.backend == "native" and device.type == "cpu"
        if native and self.density_grid.dtype == self.feature_grid.dtype == torch.float32:
            # the kernel reads float32 arrays on the CPU; anything else takes the torch path
            plan = native_plan(self, bundle, org, direction)
            return NativeVoxelRender.apply(self.density_grid, self.feature_grid, self.d_scale, plan)
        plan = torch_plan(self, bundle, org, direction)
        return TorchVoxelRender.apply(self.density_grid, self.feature_grid, self.d_scale, plan)

    # ---- maintenance
    @torch.no_grad()
    def resample(self, new_size: int | list[int] | tuple[int, ...]) -> None:
        """Resize the grids (trilinear, like the reference). Rebuild the optimizer afterwards:
        the grids are new Parameters."""
        X, Y, Z = grid_xyz(new_size)
        size = (Z, Y, X)
        density = F.interpolate(self.density_grid[None, None], size=size, mode="trilinear", align_corners=False)
        features = self.feature_grid.permute(3, 0, 1, 2)[None]
        features = F.interpolate(features, size=size, mode="trilinear", align_corners=False)
        self.density_grid = torch.nn.Parameter(density[0, 0].contiguous())
        self.feature_grid = torch.nn.Parameter(features[0].permute(1, 2, 3, 0).contiguous())
        self.grid_size = (X, Y, Z)
        self._step_size = self._host_step_size()

    @torch.no_grad()
    def density_volume(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Activated density sigma on the voxel centres [Z, Y, X] and the box [2, 3] (meshing)."""
        sigma = F.softplus(self.density_grid * torch.exp(self.d_scale) + self.density_shift)
        return sigma.detach().clone(), self.aabb.detach().clone()

    def extra_repr(self) -> str:
        X, Y, Z = self.grid_size
        return f"grid={X}x{Y}x{Z}, channels={self.channels}, activation={self.activation}"


def build_voxel_field(options: VoxelOptions, ctx: BuildContext) -> VoxelField:
    if ctx.channels is None:
        raise SjcError("field.voxel: the prior's channel count is unknown (BuildContext.channels is None)")
    if ctx.channels < 1:
        raise SjcError(f"field.voxel: channels must be >= 1 (got {ctx.channels})")
    return VoxelField(options, ctx.channels, ctx.value_range, ctx.seed, ctx.device, ctx.backdrop)


__all__ = ["VoxelField", "VoxelOptions", "activate", "background_lookup", "build_voxel_field", "check_grid_size", "grid_xyz"]
