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
* ``torch``: the same autograd node from torch operations on the grids' device (what CUDA
  runs, and the CPU without a compiler): trilinear corners of the samples once, per-corner
  gathers, the analytic weight gradient and one 1-D ``scatter_add_`` per channel; dense
  masks on GPUs (no shape depends on the data, so nothing waits for the device), compact
  in-box and above-threshold lists on the CPU.
* ``generic``: ``density``/``features`` through autograd (for checking).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sjc_core import native
from sjc_core.contracts import BuildContext
from sjc_core.errors import SjcError
from sjc_core.hookspecs import hookimpl
from sjc_core.render import SampleBundle, weights_backward, weights_forward
from sjc_plugins.fields._voxel_native import kernel_or_reason

Activation = Literal["auto", "identity", "2*sigmoid-1", "sigmoid"]
Backend = Literal["auto", "native", "torch", "generic"]
ACTIVATION_CODES = {"identity": 0, "2*sigmoid-1": 1, "sigmoid": 2}


class VoxelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grid_size: int | list[int] = Field(100, description="voxels per axis: one int, or [x, y, z] (each >= 2)")
    box_half: float = Field(1.0, gt=0, description="the box is [-box_half, box_half]^3")
    density_shift: float = Field(-1.0, description="sigma = softplus(raw * exp(d_scale) + density_shift)")
    step_ratio: float = Field(0.5, gt=0, description="ray step as a fraction of the mean voxel length")
    weight_threshold: float = Field(
        1e-4, ge=0, description="features are evaluated only where a sample's weight exceeds this"
    )
    bg_texture_size: int = Field(
        4, ge=0, description="side of the spherical background texture; 0 = no texture, zero background"
    )
    feature_activation: Activation = Field(
        "auto", description="auto: identity for latent priors, 2*sigmoid-1 for pixel priors"
    )
    init_density: float = Field(0.0, description="initial raw density of every voxel (the reference: 0)")
    init_features: float = Field(
        1.0, ge=0, description="std of the normal draw for initial features and background (the reference: 1)"
    )
    bg_lr: float = Field(1e-4, ge=0, description="learning rate of the background texture")
    backend: Backend = Field(
        "auto",
        description="render path: native (compiled per-ray kernel, CPU), torch (fused torch ops, any device), "
        "generic (plain Field contract); auto = native when it builds, else torch",
    )

    @field_validator("grid_size")
    @classmethod
    def _three_sizes(cls, value: int | list[int]) -> int | list[int]:
        return check_grid_size(value)


def check_grid_size(value: int | list[int]) -> int | list[int]:
    """The ``grid_size`` option check, shared with the fields that take voxel options."""
    sizes = [value] * 3 if isinstance(value, int) else list(value)
    if len(sizes) != 3:
        raise ValueError("give one int or three [x, y, z]")
    if any(s < 2 for s in sizes):
        raise ValueError("every size must be >= 2")
    return value


def grid_xyz(size: int | list[int] | tuple[int, ...]) -> tuple[int, int, int]:
    sizes = [size] * 3 if isinstance(size, int) else list(size)
    if len(sizes) != 3 or any(int(s) < 2 for s in sizes):
        raise ValueError(f"grid size must be one int or three, each >= 2 (got {size!r})")
    return int(sizes[0]), int(sizes[1]), int(sizes[2])


# --------------------------------------------------------------------------- trilinear corners


def trilinear_corners(u: torch.Tensor, size_xyz: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat corner indices (int32) and weights, both corner-major [8, M], of continuous voxel
    coordinates ``u`` [3, M] (rows x, y, z; voxel i's centre at u = i) in a [Z, Y, X] grid.

    Zero padding without out-of-range indices: clamping u into [0, size-1] and scaling by
    ``prod(1 - |u - clamped|)`` gives exactly the weights grid_sample keeps (a corner
    outside the grid would only ever be paired with the edge voxel on that axis).
    Corner-major rows are what the per-corner gathers and scatters below read; int32
    indices halve the memory written (grids up to 2^31 voxels).
    """
    X, Y, Z = size_xyz
    device = u.device
    sizes = (X, Y, Z)
    clamped = torch.stack([u[axis].clamp(0, sizes[axis] - 1) for axis in range(3)])
    fade = (u - clamped).abs_().neg_().add_(1).clamp_(min=0).prod(dim=0)
    lower = clamped.to(torch.int32)
    lower = torch.stack([lower[axis].clamp_(max=sizes[axis] - 2) for axis in range(3)])
    frac = clamped - lower
    rest = 1 - frac
    base = (lower[2] * (X * Y)).add_(lower[1] * X).add_(lower[0])
    count = u.shape[1]
    w8 = torch.empty(8, count, dtype=u.dtype, device=device)
    i8 = torch.empty(8, count, dtype=torch.int32, device=device)
    wz = (rest[2] * fade, frac[2] * fade)
    wy = (rest[1], frac[1])
    wx = (rest[0], frac[0])
    corner = 0
    for dz in range(2):
        for dy in range(2):
            wzy = wz[dz] * wy[dy]
            for dx in range(2):
                torch.mul(wzy, wx[dx], out=w8[corner])
                torch.add(base, dz * X * Y + dy * X + dx, out=i8[corner])
                corner += 1
    return i8, w8


def gather_corners(table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Trilinear values [S, C] of a channels-last table [G, C] at corners ``index``/``weight``
    [8, S]: corner by corner, so no [8, S, C] temporary (corners summed in order 0..7)."""
    if table.shape[1] == 1:  # one channel: 1-D gathers, several times faster on CPU
        flat = table.reshape(-1)
        out = flat.index_select(0, index[0]) * weight[0]
        for corner in range(1, 8):
            out.addcmul_(flat.index_select(0, index[corner]), weight[corner])
        return out[:, None]
    out = table.index_select(0, index[0]) * weight[0][:, None]
    for corner in range(1, 8):
        out.addcmul_(table.index_select(0, index[corner]), weight[corner][:, None])
    return out


def scatter_corners(index: torch.Tensor, weight: torch.Tensor, values: torch.Tensor, rows: int) -> torch.Tensor:
    """Transpose of :func:`gather_corners`: out[g] = sum over samples s and corners c with
    index[c, s] == g of weight[c, s] * values[s], out [rows, C].

    One 1-D ``index_add_`` per channel into a channels-first buffer (a fast loop on the
    CPU, atomic adds on GPUs; a 2-D ``index_add_`` is ~30x slower on the CPU).
    """
    channels = values.shape[1]
    out = torch.zeros(channels, rows, dtype=values.dtype, device=values.device)
    flat_index = index.reshape(-1)
    for ch in range(channels):
        out[ch].index_add_(0, flat_index, (weight * values[:, ch]).reshape(-1))
    return out.t()


class TrilinearGather(torch.autograd.Function):
    """Trilinear values of a channels-last table [G, C] at precomputed corners -> [S, C]."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(index, weight)
        ctx.rows = table.shape[0]
        return gather_corners(table, index, weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        index, weight = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return scatter_corners(index, weight, grad, ctx.rows), None, None


# --------------------------------------------------------------------------- activations


def background_lookup(texture: torch.Tensor, directions: torch.Tensor, activation: str) -> torch.Tensor:
    """Spherical background texture [1, C, s, s] seen along unit directions -> [N, C].

    u (polar angle from +z) indexes the width, v (azimuth about z) the height, bilinear with
    zero padding: the reference's lookup, in its operation order (parity depends on it).
    Every field with a texture background uses this, so fields can be swapped in a recipe.
    """
    x, y, z = directions.to(texture.dtype).t()
    u = torch.atan2((x**2 + y**2) ** 0.5, z) / torch.pi
    v = torch.atan2(y, x) / (torch.pi * 2) + 0.5
    uv = torch.stack([u, v], -1) * 2 - 1
    feats = F.grid_sample(texture, uv.view(1, -1, 1, 2), align_corners=False)
    return activate(feats.view(texture.shape[1], -1).t(), activation)


def activate(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "identity":
        return x
    if kind == "sigmoid":
        return torch.sigmoid(x)
    return torch.sigmoid(x) * 2 - 1


def _activation_slope(x: torch.Tensor, kind: str) -> torch.Tensor | None:
    """d act / dx, or None for the identity."""
    if kind == "identity":
        return None
    s = torch.sigmoid(x)
    slope = s * (1 - s)
    return slope * 2 if kind == "2*sigmoid-1" else slope


# --------------------------------------------------------------------------- fused render


class _TorchVoxelRender(torch.autograd.Function):
    """Foreground features [n, C] and weights [n, k] of a bundle in one node, from torch
    operations on the grids' device (the path CUDA runs, and the CPU's without a compiler).

    ``plan`` holds the samples' corners. Dense plans (GPUs) cover all n*k samples, with
    out-of-box corner weights zeroed and sub-threshold features masked, so no shape depends
    on the data; compact plans (CPU) list the in-box samples (``positions``) and gather
    features only where the weight passes the threshold. The backward takes gradients of
    both outputs, either of them absent, through any number of backward calls.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, density: torch.Tensor, features: torch.Tensor, d_scale: torch.Tensor, plan: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, k, step = plan["n"], plan["k"], plan["step"]
        channels = features.shape[-1]
        index, weight, inbox = plan["index"], plan["weight"], plan["inbox"]
        raw_samples = gather_corners(density.detach().reshape(-1, 1), index, weight)[:, 0]
        positions = plan.get("positions")
        if positions is None:
            raw = raw_samples.view(n, k)
        else:
            raw = raw_samples.new_zeros(n * k).index_put_((positions,), raw_samples).view(n, k)
        scale = torch.exp(d_scale.detach())
        z = raw * scale + plan["shift"]
        sigma = F.softplus(z) * inbox
        w, _, inclusive = weights_forward(sigma, step)
        keep = (w > plan["threshold"]).view(-1)
        table = features.detach().reshape(-1, channels)
        if positions is None:  # dense: every sample, masked
            kept, f_index, f_weight = None, index, weight
        else:  # compact: the samples above the threshold, by their place in the in-box list
            kept = keep.nonzero().squeeze(1)
            rows = plan["row_pointer"].index_select(0, kept)
            f_index, f_weight = index.index_select(1, rows), weight.index_select(1, rows)
        feats_raw = gather_corners(table, f_index, f_weight)
        feats = activate(feats_raw, plan["activation"])
        if kept is None:
            feats = feats * keep[:, None]
            rgb = torch.bmm(w[:, None, :], feats.view(n, k, channels)).squeeze(1)
        else:
            w_kept = w.view(-1).index_select(0, kept)
            rgb = feats.new_zeros(n, channels).index_add_(0, kept // k, feats * w_kept[:, None])
        ctx.save_for_backward(raw, z, w, inclusive, feats, feats_raw, scale)
        ctx.kept, ctx.f_index, ctx.f_weight = kept, f_index, f_weight
        ctx.keep = keep
        ctx.plan = plan
        ctx.shapes = (density.shape, features.shape)
        ctx.set_materialize_grads(False)
        return rgb, w

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_rgb: torch.Tensor | None, grad_w: torch.Tensor | None
    ) -> tuple[Any, ...]:
        raw, z, w, inclusive, feats, feats_raw, scale = ctx.saved_tensors
        plan, kept = ctx.plan, ctx.kept
        n, k = plan["n"], plan["k"]
        channels = feats.shape[-1]
        gw = torch.zeros_like(w) if grad_w is None else grad_w.reshape(n, k).clone(memory_format=torch.contiguous_format)
        if grad_rgb is not None:  # d rgb / d w_j = feature_j
            g_rgb = grad_rgb.reshape(n, channels)
            if kept is None:
                gw += torch.bmm(feats.view(n, k, channels), g_rgb[:, :, None]).view(n, k)
            else:
                gw.view(-1).index_add_(0, kept, (feats * g_rgb.index_select(0, kept // k)).sum(dim=1))
        dsigma = weights_backward(gw, w, inclusive, plan["step"])
        graw = dsigma * torch.sigmoid(z) * plan["inbox"] * scale
        grad_scale = (graw * raw).sum() if ctx.needs_input_grad[2] else None
        grad_density = grad_features = None
        if ctx.needs_input_grad[0]:
            positions = plan.get("positions")
            per_sample = graw.reshape(-1) if positions is None else graw.reshape(-1).index_select(0, positions)
            rows = int(np.prod(ctx.shapes[0]))
            grad_density = scatter_corners(plan["index"], plan["weight"], per_sample[:, None], rows).reshape(ctx.shapes[0])
        if ctx.needs_input_grad[1]:
            if grad_rgb is None:
                grad_features = torch.zeros(ctx.shapes[1], dtype=feats.dtype, device=feats.device)
            else:
                g_rgb = grad_rgb.reshape(n, channels)
                if kept is None:
                    dfeat = (w * ctx.keep.view(n, k))[:, :, None] * g_rgb[:, None, :]
                    dfeat = dfeat.reshape(n * k, channels)
                else:
                    dfeat = w.view(-1).index_select(0, kept)[:, None] * g_rgb.index_select(0, kept // k)
                slope = _activation_slope(feats_raw, plan["activation"])
                if slope is not None:
                    dfeat = dfeat * slope
                rows = int(np.prod(ctx.shapes[1][:-1]))
                table = scatter_corners(ctx.f_index, ctx.f_weight, dfeat, rows)
                grad_features = table.reshape(ctx.shapes[1])
        return grad_density, grad_features, grad_scale, None


class _NativeVoxelRender(torch.autograd.Function):
    """The node of :class:`_FusedVoxelRender`, computed by the compiled per-ray kernel, which
    also sums opacity and depth on its way along each ray."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, density: torch.Tensor, features: torch.Tensor, d_scale: torch.Tensor, plan: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n, k = plan["n"], plan["k"]
        channels = features.shape[-1]
        rgb = torch.empty(n, channels)
        opacity = torch.empty(n)
        depth = torch.empty(n)
        w = torch.empty(n, k)
        raw = torch.empty(n, k)
        alpha = torch.empty(n, k)
        slope = torch.empty(n, k)
        feats = torch.empty(n, k, channels)  # written only where w > threshold
        dens = density.detach().contiguous()
        feat = features.detach().contiguous()
        scale = float(torch.exp(d_scale.detach()).item())
        ptr = lambda t: t.data_ptr()  # noqa: E731
        lib = plan["lib"]

        def run(r0: int, r1: int) -> None:
            status = lib.sjc_voxel_forward(
                r0, r1, k, plan["order_ptr"], ptr(plan["org"]), ptr(plan["dir"]), ptr(plan["t_min"]),
                ptr(plan["counts"]), ptr(plan["ticks"]), ptr(dens), ptr(feat), *plan["xyz"], channels,
                scale, plan["shift"], plan["step"], plan["threshold"], plan["activation"],
                ptr(rgb), ptr(opacity), ptr(depth), ptr(w), ptr(raw), ptr(alpha), ptr(slope), ptr(feats),
            )
            if status != 0:
                raise RuntimeError(f"voxel kernel failed ({status}): 1 to 64 channels, or out of memory")

        splits = plan["splits"]
        native.run_calls([functools.partial(run, a, b) for a, b in zip(splits, splits[1:])], len(splits) - 1)
        ctx.save_for_backward(w, raw, alpha, slope, feats)
        ctx.plan = plan
        ctx.scale = scale
        ctx.shapes = (density.shape, features.shape)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no [n, k] zeros
        return rgb, w, opacity, depth

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        grad_rgb: torch.Tensor | None,
        grad_w: torch.Tensor | None,
        grad_opacity: torch.Tensor | None,
        grad_depth: torch.Tensor | None,
    ) -> tuple[Any, ...]:
        w, raw, alpha, slope, feats = ctx.saved_tensors
        plan = ctx.plan
        n, k = plan["n"], plan["k"]
        channels = feats.shape[-1]
        g_rgb = torch.zeros(n, channels) if grad_rgb is None else grad_rgb.contiguous()
        g_w, g_opacity, g_depth = (None if g is None else g.contiguous() for g in (grad_w, grad_opacity, grad_depth))
        optional = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        splits = plan["splits"]
        parts = len(splits) - 1
        dens_shape, feat_shape = ctx.shapes
        grads = [(torch.zeros(dens_shape), torch.zeros(feat_shape)) for _ in range(parts)]
        partial = (ctypes.c_double * parts)()
        ptr = lambda t: t.data_ptr()  # noqa: E731
        lib = plan["lib"]

        def run(part: int, r0: int, r1: int) -> None:
            lib.sjc_voxel_backward(
                r0, r1, k, plan["order_ptr"], ptr(plan["org"]), ptr(plan["dir"]), ptr(plan["t_min"]),
                ptr(plan["counts"]), ptr(plan["ticks"]), *plan["xyz"], channels,
                ctx.scale, plan["step"], plan["threshold"], plan["activation"],
                ptr(g_rgb), optional(g_w), optional(g_opacity), optional(g_depth),
                ptr(w), ptr(raw), ptr(alpha), ptr(slope),
                ptr(feats), ptr(grads[part][0]), ptr(grads[part][1]),
                ctypes.byref(partial, part * ctypes.sizeof(ctypes.c_double)),
            )

        ranges = enumerate(zip(splits, splits[1:]))
        native.run_calls([functools.partial(run, i, a, b) for i, (a, b) in ranges], parts)
        grad_density, grad_features = grads[0]
        for extra_density, extra_features in grads[1:]:
            grad_density += extra_density
            grad_features += extra_features
        grad_scale = torch.tensor(sum(partial), dtype=torch.float32) if ctx.needs_input_grad[2] else None
        return grad_density, grad_features, grad_scale, None


def _ray_splits(counts: np.ndarray, parts: int) -> list[int]:
    """Ray boundaries giving each part about the same number of samples."""
    n = len(counts)
    if parts <= 1 or n < 1024:
        return [0, n]
    cum = np.cumsum(counts)
    targets = cum[-1] * np.arange(1, parts) / parts
    inner = np.searchsorted(cum, targets).tolist()
    return sorted({0, n, *[int(b) for b in inner]})


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

        self.density_grid = torch.nn.Parameter(torch.full((Z, Y, X), float(options.init_density)).to(device))
        self.feature_grid = torch.nn.Parameter(normal(Z, Y, X, self.channels).to(device))
        self.d_scale = torch.nn.Parameter(torch.tensor(0.0, device=device))
        size = options.bg_texture_size
        self.bg: torch.nn.Parameter | None = (
            torch.nn.Parameter(normal(1, self.channels, size, size).to(device)) if size > 0 else None
        )

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
        index, weight = trilinear_corners(self.voxel_coords(points.to(table.dtype)), self.grid_size)
        rows = table.reshape(int(np.prod(self.grid_size)), -1)
        return TrilinearGather.apply(rows, index.to(table.device), weight.to(table.device))

    # ---- Field contract
    def density(self, points: torch.Tensor) -> torch.Tensor:
        raw = self._gather(self.density_grid, points)[:, 0]
        return F.softplus(raw * torch.exp(self.d_scale) + self.density_shift)

    def features(self, points: torch.Tensor) -> torch.Tensor:
        return activate(self._gather(self.feature_grid, points), self.activation)

    def background(self, directions: torch.Tensor) -> torch.Tensor:
        if self.bg is None:
            zeros = directions.new_zeros(directions.shape[0], self.channels)
            return zeros.to(self.feature_grid.dtype)
        return background_lookup(self.bg, directions, self.activation)

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
        native = native and self.density_grid.dtype == self.feature_grid.dtype == torch.float32
        if native:  # the kernel reads float32 arrays on the CPU; anything else takes the torch path
            lib, _ = kernel_or_reason()
            threads = max(1, torch.get_num_threads())
            f32 = lambda t: t.detach().to(torch.float32).contiguous()  # noqa: E731
            order = None
            if bundle.order is not None:
                order = torch.from_numpy(np.ascontiguousarray(bundle.order, dtype=np.int64))
            counts = bundle.counts.numpy()
            in_order = counts if order is None else counts[bundle.order]
            plan = {
                "lib": lib, "n": bundle.n, "k": bundle.k,
                "order": order, "order_ptr": None if order is None else order.data_ptr(),
                "org": f32(org), "dir": f32(direction), "t_min": f32(bundle.t_min),
                "counts": bundle.counts.contiguous(),
                "ticks": f32(bundle.ticks), "xyz": self.grid_size,
                "shift": self.density_shift, "step": bundle.step, "threshold": self.weight_threshold,
                "activation": ACTIVATION_CODES[self.activation],
                "splits": _ray_splits(in_order, threads),
            }
            return _NativeVoxelRender.apply(self.density_grid, self.feature_grid, self.d_scale, plan)
        u = torch.addcmul(org.t()[:, :, None], direction.t()[:, :, None], bundle.t_dense[None]).reshape(3, -1)
        positions = bundle.positions if bundle.compact else None
        if positions is not None:
            u = u.index_select(1, positions)
        index, weight = trilinear_corners(u, self.grid_size)
        plan = {
            "n": bundle.n,
            "k": bundle.k,
            "step": bundle.step,
            "index": index,
            "weight": weight,
            "positions": positions,
            "row_pointer": bundle.row_pointer[:-1] if positions is not None else None,
            "inbox": bundle.inbox.to(self.density_grid.dtype),
            "shift": self.density_shift,
            "threshold": self.weight_threshold,
            "activation": self.activation,
        }
        return _TorchVoxelRender.apply(self.density_grid, self.feature_grid, self.d_scale, plan)

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
    return VoxelField(options, ctx.channels, ctx.value_range, ctx.seed, ctx.device)


@hookimpl
def register_fields(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="voxel",
        factory=build_voxel_field,
        description="Dense voxel grid (the reference's V_SD/V_SJC) with a fused fast renderer",
        options=VoxelOptions,
    )


__all__ = ["TrilinearGather", "VoxelField", "VoxelOptions", "scatter_corners", "trilinear_corners"]
