"""Field ``hashgrid``: a multi-resolution hash encoding, a small shared MLP, two output heads.

Same contract as the voxel field (``density``, ``features``, ``background``,
``param_groups``, ``aabb``, ``step_size``, ``weight_threshold``) and the same density
activation, ``softplus(raw + density_shift)``, so a recipe switches fields by changing
``[field] name`` alone: the options the two fields share keep their names and meaning,
and ``grid_size`` here sets only the ray-marching step (that of a voxel grid this size).

Two backends compute the encoding: a pure-PyTorch one (``hash_encoding.py``, any device)
and tiny-cuda-nn's fused ``HashGrid`` (CUDA only, used automatically when importable).
The MLP is ordinary PyTorch layers in both cases. Checkpoints do not move between
backends: tiny-cuda-nn lays its table out its own way and offsets its lattice by half a
cell, so the same sizes give the same kind of encoding but not the same numbers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sjc_core.contracts import BuildContext
from sjc_core.errors import SjcError
from sjc_core.render.samples import SampleBundle
from sjc_core.render.weights import VolumeWeights
from sjc_plugins.fields.backdrop import backdrop_background, plain_backdrop, register_backdrop
from sjc_plugins.fields.hash_encoding import HashEncoding, HashGridSpec
from sjc_plugins.fields.hashgrid_options import (  # noqa: F401 (re-exported: the options live there)
    CPU_DEFAULTS,
    GPU_DEFAULTS,
    Backend,
    HashGridOptions,
)
from sjc_plugins.fields.occupancy import OccupancyGrid
from sjc_plugins.fields.voxel import (  # same activations, sizes, background as the voxel field
    activate,
    grid_xyz,
)

SAMPLE_CHUNK = 1 << 15  # samples per chunk in render_foreground


def resolve_spec(options: HashGridOptions, device: torch.device) -> HashGridSpec:
    """The grid sizes: the options where set, else the defaults of the device kind."""
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    levels = options.levels if options.levels is not None else defaults["levels"]
    log2_t = options.log2_table_size if options.log2_table_size is not None else defaults["log2_table_size"]
    top = options.max_resolution if options.max_resolution is not None else defaults["max_resolution"]
    top = max(top, options.base_resolution)
    if levels == 1:
        top = options.base_resolution
    # levels <= 32 and log2_table_size <= 24 keep the table under 2^31 rows (int32 indices)
    return HashGridSpec(levels, options.features_per_level, log2_t, options.base_resolution, top)


def _import_tcnn() -> tuple[Any, str]:
    """(module, '') when tiny-cuda-nn's bindings import, else (None, why).

    Its import raises EnvironmentError, not ImportError, when no CUDA device is usable,
    hence the broad except.
    """
    try:
        import tinycudann  # type: ignore[import-not-found]
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]
    return tinycudann, ""


def choose_backend(requested: Backend, device: torch.device, tcnn_error: str | None) -> str:
    """Which encoder to build.

    ``tcnn_error`` is None when tinycudann imported, else the reason it did not. ``auto``
    picks tinycudann only on CUDA with a working import; forcing it otherwise is a
    one-line user error naming the option.
    """
    if requested == "torch":
        return "torch"
    if requested == "tinycudann":
        if tcnn_error is not None:
            raise SjcError(
                f"field.backend: 'tinycudann' is not importable ({tcnn_error}); install tiny-cuda-nn's "
                "PyTorch bindings or set backend = \"auto\""
            )
        if device.type != "cuda":
            raise SjcError(f"field.backend: 'tinycudann' needs a CUDA device, the field is on {device.type}; set backend = \"auto\"")
        return "tinycudann"
    if device.type != "cuda":
        return "torch"
    return "tinycudann" if tcnn_error is None else "torch"


class TcnnHashEncoding(nn.Module):
    """tiny-cuda-nn's fused hash grid with the same sizes (float32 table and output)."""

    def __init__(self, spec: HashGridSpec, tcnn: Any, seed: int):
        super().__init__()
        self.spec = spec
        self.inner = tcnn.Encoding(n_input_dims=3, encoding_config=spec.tcnn_config(), seed=seed, dtype=torch.float32)

    @property
    def output_dim(self) -> int:
        return self.spec.output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.clamp(0.0, 1.0)).float()


def _linear(inputs: int, outputs: int, generator: torch.Generator) -> nn.Linear:
    """PyTorch's default weight init, seeded; zero bias, so a near-zero encoding (the
    table starts at +-1e-4) gives near-zero outputs: density softplus(init_density +
    density_shift) and features act(0), like a fresh voxel grid of zeros."""
    layer = nn.Linear(inputs, outputs)
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    nn.init.zeros_(layer.bias)
    return layer


def make_trunk(inputs: int, hidden: int, layers: int, generator: torch.Generator) -> nn.Sequential:
    """The shared ReLU MLP between the encoding and the two output layers."""
    modules: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        modules += [_linear(width, hidden, generator), nn.ReLU()]
        width = hidden
    return nn.Sequential(*modules)


class HashGridField(nn.Module):
    """A hash-grid radiance field over ``[-box_half, box_half]^3`` (see module docstring)."""

    def __init__(self, options: HashGridOptions, ctx: BuildContext):
        super().__init__()
        if ctx.channels is not None and ctx.channels < 1:
            raise SjcError(f"field.hashgrid: channels must be >= 1 (got {ctx.channels})")
        channels = ctx.channels or 3
        generator = torch.Generator().manual_seed(ctx.seed)
        self.options = options
        self.spec = resolve_spec(options, ctx.device)
        tcnn, why = (None, "not tried on this device")
        if options.backend == "tinycudann" or (options.backend == "auto" and ctx.device.type == "cuda"):
            tcnn, why = _import_tcnn()
        self.backend = choose_backend(options.backend, ctx.device, None if tcnn is not None else why)
        if self.backend == "tinycudann":
            self.encoding: nn.Module = TcnnHashEncoding(self.spec, tcnn, seed=ctx.seed)
        else:
            self.encoding = HashEncoding(self.spec, generator=generator)
        dim = self.spec.output_dim
        # One trunk, two output layers (as instant-NGP shares its density network): the
        # trunk runs once per sample, the feature layer only where the weight passes.
        self.trunk = make_trunk(dim, options.hidden_dim, options.hidden_layers, generator)
        width = options.hidden_dim if options.hidden_layers > 0 else dim
        self.density_out = _linear(width, 1, generator)
        with torch.no_grad():
            self.density_out.bias.fill_(options.init_density)
        self.feature_out = _linear(width, channels, generator)
        size = options.bg_texture_size
        self.bg: nn.Parameter | None = None
        if size > 0:
            self.bg = nn.Parameter(torch.randn(1, channels, size, size, generator=generator) * options.init_features)

        half = float(options.box_half)
        self.register_buffer("aabb", torch.tensor([[-half] * 3, [half] * 3], dtype=torch.float32), persistent=False)
        # the voxel field's step, computed the same way (float32 mean cell length x ratio),
        # so both fields march the same samples at the same grid_size
        lengths = torch.full((3,), 2 * half, dtype=torch.float32) / torch.tensor(grid_xyz(options.grid_size), dtype=torch.float32)
        self.step_size = float((lengths.mean() * options.step_ratio).item())
        self.weight_threshold = float(options.weight_threshold)
        self.density_shift = float(options.density_shift)
        self.channels = channels
        activation = options.feature_activation
        if activation == "auto":
            activation = "identity" if ctx.value_range is None else "2*sigmoid-1"
        self.activation = activation
        backdrop = plain_backdrop(options.background_from_prior, ctx.backdrop, channels, activation)
        register_backdrop(self, backdrop, channels, "cpu")
        self.occupancy: OccupancyGrid | None = None
        if options.occupancy_resolution > 0:
            self.occupancy = OccupancyGrid(
                options.occupancy_resolution, self.aabb, self.step_size, options.occupancy_threshold,
                options.occupancy_every, options.occupancy_warmup, seed=ctx.seed,
            )

    def encode(self, points: torch.Tensor) -> torch.Tensor:
        """Hash features [N, L*F] of world points [N, 3] (normalised to [0, 1] inside the box)."""
        lo, hi = self.aabb[0], self.aabb[1]
        return self.encoding((points - lo) / (hi - lo))

    def hidden(self, points: torch.Tensor) -> torch.Tensor:
        """Trunk output [N, hidden] (both output layers read it)."""
        return self.trunk(self.encode(points))

    def _sigma(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.density_out(hidden).squeeze(-1) + self.density_shift)

    def _features(self, hidden: torch.Tensor) -> torch.Tensor:
        return activate(self.feature_out(hidden), self.activation)

    def _occupied(self, points: torch.Tensor) -> torch.Tensor | None:
        """Bool [N] from the occupancy grid, or None without one."""
        return None if self.occupancy is None else self.occupancy.occupied(points)

    # ---- Field contract
    def density(self, points: torch.Tensor) -> torch.Tensor:
        """Density at world points, 0 in cells the occupancy grid records as empty."""
        sigma = self._sigma(self.hidden(points))
        occupied = self._occupied(points)
        return sigma if occupied is None else sigma * occupied

    def resize_for_state(self, state: dict[str, torch.Tensor]) -> None:
        """Before a checkpoint loads: one written before the occupancy grid existed lacks its
        record; it resumes with an empty, inactive record (refilled at the next refresh)."""
        if self.occupancy is not None and not any(key.startswith("occupancy.") for key in state):
            for key, value in self.occupancy.state_dict().items():
                state[f"occupancy.{key}"] = torch.zeros_like(value)

    def after_step(self, step: int, optimizer: torch.optim.Optimizer) -> bool:
        """Refresh the occupancy grid on its schedule; the parameters never change here."""
        if self.occupancy is not None:
            self.occupancy.refresh(step, lambda points: self._sigma(self.hidden(points)))
        return False

    def features(self, points: torch.Tensor) -> torch.Tensor:
        return self._features(self.hidden(points))

    def background(self, directions: torch.Tensor) -> torch.Tensor:
        """The voxel field's spherical texture lookup (same mapping, activation included)."""
        return backdrop_background(self, directions, self.aabb.dtype)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Table at ``lr``, MLP at ``lr * mlp_lr_scale``, background at ``bg_lr``."""
        groups: list[dict[str, Any]] = [
            {"params": list(self.encoding.parameters()), "lr": lr},
            {
                "params": [*self.trunk.parameters(), *self.density_out.parameters(), *self.feature_out.parameters()],
                "lr": lr * self.options.mlp_lr_scale,
            },
        ]
        if self.bg is not None:
            groups.append({"params": [self.bg], "lr": self.options.bg_lr})
        return groups

    # ---- fast path (the renderer uses it when present)
    def render_foreground(self, bundle: SampleBundle) -> tuple[torch.Tensor, torch.Tensor]:
        """Foreground features [n, C] and weights [n, k], encoding each in-box sample once.

        The same result as the renderer's generic path, which would run the encoding and
        trunk a second time for ``features`` on the samples that pass the weight threshold.
        """
        n, k = bundle.n, bundle.k
        if not bundle.compact:  # every sample, masked: no shape depends on the data
            dense_points = bundle.dense_points()
            hidden = self.hidden(dense_points)
            mask = bundle.inbox.reshape(-1)
            occupied = self._occupied(dense_points)
            if occupied is not None:
                mask = mask & occupied
            sigma = (self._sigma(hidden) * mask).view(n, k)
            w = VolumeWeights.apply(sigma, bundle.step)
            keep = (w.detach() > self.weight_threshold).reshape(-1, 1)
            feats = torch.where(keep, self._features(hidden), torch.zeros((), device=hidden.device))
            return torch.bmm(w[:, None, :], feats.view(n, k, self.channels)).squeeze(1), w
        # On CPU, chunks keep every temporary small: tensors of tens of MB are fresh
        # page-faulted memory on each allocation, which costs more than the arithmetic.
        points, positions, row_pointer = bundle.points(), bundle.positions, bundle.row_pointer
        occupied = self._occupied(points)
        if occupied is not None:  # only samples in occupied cells are encoded at all
            points, positions = points[occupied], positions[occupied]
            flags = torch.zeros(n * k, dtype=torch.int64, device=positions.device).index_fill_(0, positions, 1)
            row_pointer = torch.cat([flags.new_zeros(1), flags.cumsum(0)])
        size = SAMPLE_CHUNK
        hidden = [self.hidden(chunk) for chunk in points.split(size)] or [self.hidden(points)]
        sigma_in = torch.cat([self._sigma(h) for h in hidden])
        sigma = torch.zeros(n * k, dtype=sigma_in.dtype, device=sigma_in.device)
        sigma = sigma.index_put((positions,), sigma_in).view(n, k)
        w = VolumeWeights.apply(sigma, bundle.step)
        keep_pos = (w.detach() > self.weight_threshold).view(-1).nonzero().squeeze(1)
        compact = row_pointer[:-1][keep_pos]  # ascending
        bounds = torch.searchsorted(compact, torch.arange(0, len(hidden) + 1, device=compact.device) * size).tolist()
        feats = torch.cat(
            [self._features(h[compact[a:b] - i * size]) for i, (h, a, b) in enumerate(zip(hidden, bounds, bounds[1:]))]
        )
        dense = torch.zeros(n * k, self.channels, dtype=feats.dtype, device=feats.device)
        dense = dense.index_put((keep_pos,), feats).view(n, k, self.channels)
        return torch.bmm(w[:, None, :], dense).squeeze(1), w

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"backend={self.backend}, levels={s.levels}, features={s.features}, log2_T={s.log2_table_size}, "
            f"resolution={s.base_resolution}..{s.max_resolution}, step={self.step_size:g}, activation={self.activation}, "
            f"occupancy={self.occupancy.resolution if self.occupancy is not None else 0}"
        )


def build_hashgrid_field(options: HashGridOptions, ctx: BuildContext) -> HashGridField:
    return HashGridField(options, ctx)


