"""The voxel field's options and registration: what listing, validating and planning need.

Kept apart from :mod:`sjc_plugins.fields.voxel` (the field itself) so that ``sjc --help``,
``sjc list-plugins`` and ``sjc validate`` never import torch: the factory imports the
implementation on first use.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sjc_core.hookspecs import hookimpl
from sjc_core.recipes.values import Flag, Float, Int, SetText

if TYPE_CHECKING:
    from sjc_core.contracts import BuildContext
    from sjc_plugins.fields.voxel import VoxelField

Activation = Literal["auto", "identity", "2*sigmoid-1", "sigmoid"]


Backend = Literal["auto", "native", "torch", "generic"]


MAX_GRID_SIDE = 1024  # voxels per axis


MAX_VOXELS = 512**3  # density + features + Adamax state of 512^3 voxels is about 10 GB for 4 channels


MAX_RAY_SAMPLES = 2**14  # samples per ray: sqrt(3) * mean(grid_size) / step_ratio, the renderer's dense k


MIN_STEP_RATIO = 1e-3


MAX_TEXTURE = 4096


# Options the ray-marched fields share (voxel, hashgrid): one definition, same meaning.
BOX_HALF = Field(1.0, gt=0, le=1000, description="the box is [-box_half, box_half]^3 (at most 1000)")
WEIGHT_THRESHOLD = Field(
    1e-4, ge=0, le=1, description="features are evaluated only where a sample's weight exceeds this (0..1)"
)
BG_TEXTURE_SIZE = Field(
    4,
    ge=0,
    le=MAX_TEXTURE,
    description=f"side of the spherical background texture (at most {MAX_TEXTURE}); 0 = no texture, zero background",
)
FEATURE_ACTIVATION = Field("auto", description="auto: identity for latent priors, 2*sigmoid-1 for pixel priors")
BG_LR = Field(1e-4, ge=0, le=1000, description="learning rate of the background texture (at most 1000)")
BACKGROUND_FROM_PRIOR = Field(
    True,
    description="when the prior reports a plain backdrop (an image set whose borders are one colour), the "
    "background starts at it (and keeps it as its base), so empty space shows that backdrop, not a grey haze",
)


class VoxelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    grid_size: int | list[int] = Field(
        100,
        description=f"voxels per axis: one int, or [x, y, z] (each 2..{MAX_GRID_SIDE}, at most {MAX_VOXELS:,} in all)",
    )
    box_half: Float = BOX_HALF
    density_shift: Float = Field(
        -1.0, ge=-1000, le=1000, description="sigma = softplus(raw * exp(d_scale) + density_shift) (-1000..1000)"
    )
    step_ratio: Float = Field(
        0.5,
        ge=MIN_STEP_RATIO,
        le=100,
        description=f"ray step as a fraction of the mean voxel length ({MIN_STEP_RATIO:g}..100; a ray may take at most "
        f"{MAX_RAY_SAMPLES} samples: sqrt(3) * mean(grid_size) / step_ratio)",
    )
    weight_threshold: Float = WEIGHT_THRESHOLD
    bg_texture_size: Int = BG_TEXTURE_SIZE
    feature_activation: Activation = FEATURE_ACTIVATION
    init_density: Float = Field(
        0.0, ge=-1000, le=1000, description="initial raw density of every voxel (the reference: 0; -1000..1000)"
    )
    init_features: Float = Field(
        1.0,
        ge=0,
        le=1000,
        description="std of the normal draw for initial features and background texture (the reference: 1; at most 1000; the texture starts at zero over a plain backdrop from the prior)",
    )
    bg_lr: Float = BG_LR
    background_from_prior: Flag = BACKGROUND_FROM_PRIOR
    backend: Backend = Field(
        "auto",
        description="render path: native (compiled per-ray kernel, CPU), torch (fused torch ops, any device), "
        "generic (plain Field contract); auto = native when it builds, else torch",
    )

    @field_validator("grid_size", mode="before")
    @classmethod
    def _three_sizes(cls, value: Any) -> int | list[int]:
        return check_grid_size(value, max_voxels=MAX_VOXELS)

    @model_validator(mode="after")
    def _samples_per_ray(self) -> VoxelOptions:
        check_ray_samples(self.grid_size, self.step_ratio)
        return self

    def preflight(self, ctx: BuildContext) -> None:
        """What building the field checks: a forced native backend must be available."""
        if self.backend == "native":
            from sjc_core.devices import as_device
            from sjc_plugins.fields.voxel import VoxelField

            VoxelField._resolve_backend("native", as_device(ctx.device))


def check_grid_size(value: Any, max_voxels: int | None = None) -> int | list[int]:
    """The ``grid_size`` option check, shared with the fields that take voxel options.

    Runs before type conversion (one error line whatever is wrong): one whole number or
    three, each 2..MAX_GRID_SIDE, and at most ``max_voxels`` in all when given.
    """
    expected = f"give one whole number or three [x, y, z], each 2..{MAX_GRID_SIDE}"
    single = not isinstance(value, (list, tuple))
    sizes = [value] if single else list(value)
    if not single and len(sizes) != 3:
        raise ValueError(expected)
    whole = []
    for size in sizes:
        if isinstance(size, SetText) and size.strip().lstrip("+").isdigit():  # as typed after --set
            size = int(size)
        elif isinstance(size, str):  # quoted in a file: a string is never a number
            raise ValueError(f"{expected} (not a string: write it without quotes)")
        if isinstance(size, float) and size.is_integer():
            size = int(size)
        if isinstance(size, bool) or not isinstance(size, int):
            raise ValueError(expected)
        whole.append(size)
    if any(not 2 <= size <= MAX_GRID_SIDE for size in whole):
        raise ValueError(f"every size must be 2..{MAX_GRID_SIDE}")
    xyz = whole * 3 if single else whole
    if max_voxels is not None and xyz[0] * xyz[1] * xyz[2] > max_voxels:
        raise ValueError(f"at most {max_voxels:,} voxels in all (got {xyz[0] * xyz[1] * xyz[2]:,})")
    return whole[0] if single else whole


def check_ray_samples(grid_size: int | list[int], step_ratio: float) -> None:
    """A ray crosses the box diagonal in about sqrt(3) * mean(size) / step_ratio steps; bound it."""
    sizes = [grid_size] * 3 if isinstance(grid_size, int) else list(grid_size)
    mean_cell = sum(1.0 / size for size in sizes) / 3  # in box widths
    samples = math.sqrt(3) / (mean_cell * step_ratio)
    if samples > MAX_RAY_SAMPLES:
        raise ValueError(
            f"step_ratio: {step_ratio:g} with grid_size {grid_size} gives about {samples:,.0f} samples per ray "
            f"(at most {MAX_RAY_SAMPLES}); raise step_ratio"
        )


def grid_xyz(size: int | list[int] | tuple[int, ...]) -> tuple[int, int, int]:
    sizes = [size] * 3 if isinstance(size, int) else list(size)
    if len(sizes) != 3 or any(int(s) < 2 for s in sizes):
        raise ValueError(f"grid size must be one int or three, each >= 2 (got {size!r})")
    return int(sizes[0]), int(sizes[1]), int(sizes[2])


@hookimpl
def register_fields(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="voxel",
        factory=build_voxel_field,
        description="Dense voxel grid (the reference's V_SD/V_SJC) with a fused fast renderer",
        options=VoxelOptions,
    )


def build_voxel_field(options: VoxelOptions, ctx: BuildContext) -> VoxelField:
    """The registered factory: imports the field (and torch) on first use."""
    from sjc_plugins.fields.voxel import build_voxel_field as build

    return build(options, ctx)
