"""The hash-grid field's options and registration, without torch (see voxel_options)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sjc_core.hookspecs import hookimpl
from sjc_core.recipes.values import Flag, Float, Int
from sjc_plugins.fields.voxel_options import (  # same sizes, checks and shared options as the voxel field
    BACKGROUND_FROM_PRIOR,
    BG_LR,
    BG_TEXTURE_SIZE,
    BOX_HALF,
    FEATURE_ACTIVATION,
    MAX_RAY_SAMPLES,
    MIN_STEP_RATIO,
    WEIGHT_THRESHOLD,
    Activation,
    check_grid_size,
    check_ray_samples,
)

if TYPE_CHECKING:
    from sjc_core.contracts import BuildContext
    from sjc_plugins.fields.hashgrid import HashGridField

Backend = Literal["auto", "torch", "tinycudann"]


# Sizes chosen per device when an option is left unset. CPU: few levels and small tables,
# because the pure-PyTorch encoder's cost grows with levels x 8 corners and table cache
# misses. GPU: the instant-NGP sizes (16 levels of 2^19 entries, 16 -> 2048).
CPU_DEFAULTS = {"levels": 8, "log2_table_size": 15, "max_resolution": 256}


GPU_DEFAULTS = {"levels": 16, "log2_table_size": 19, "max_resolution": 2048}


MAX_TABLE_FLOATS = 2**29  # levels x 2**log2_table_size x features_per_level: 2 GiB of float32 (about 8 with gradients and Adamax)


MAX_RESOLUTION = 2**16


class HashGridOptions(BaseModel):
    """Options of the ``hashgrid`` field; unset sizes take the CPU or GPU defaults."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # Shared with the voxel field: same names, same meaning (grid_size only sets the step).
    grid_size: int | list[int] = Field(
        100,
        description="ray-marching resolution, one int or [x, y, z] (each 2..1024): step = "
        "mean(2*box_half/size)*step_ratio, as for a voxel grid this size (there are no voxels here)",
    )
    box_half: Float = BOX_HALF
    density_shift: Float = Field(
        -1.0, ge=-1000, le=1000, description="sigma = softplus(raw + density_shift), as in the voxel field (-1000..1000)"
    )
    step_ratio: Float = Field(
        0.5,
        ge=MIN_STEP_RATIO,
        le=100,
        description=f"ray step as a fraction of the mean cell length of grid_size ({MIN_STEP_RATIO:g}..100; a ray "
        f"may take at most {MAX_RAY_SAMPLES} samples)",
    )
    weight_threshold: Float = WEIGHT_THRESHOLD
    bg_texture_size: Int = BG_TEXTURE_SIZE
    feature_activation: Activation = FEATURE_ACTIVATION
    init_density: Float = Field(
        0.0, ge=-1000, le=1000, description="initial raw density everywhere (the density head's output bias; -1000..1000)"
    )
    init_features: Float = Field(
        1.0, ge=0, le=1000, description="std of the normal draw for the initial background texture (features start near 0; zero over a plain backdrop from the prior)"
    )
    bg_lr: Float = BG_LR
    background_from_prior: Flag = BACKGROUND_FROM_PRIOR

    # The hash grid itself.
    backend: Backend = Field(
        "auto", description="auto: tinycudann on CUDA when importable, else torch; or force one"
    )
    levels: Int | None = Field(None, ge=1, le=32, description="resolution levels L (default: 8 on CPU, 16 on CUDA)")
    features_per_level: Int = Field(2, ge=1, le=8, description="features per level F")
    log2_table_size: Int | None = Field(
        None, ge=4, le=24, description="log2 of the entries per level T (default: 15 on CPU, 19 on CUDA)"
    )
    base_resolution: Int = Field(
        16, ge=2, le=MAX_RESOLUTION, description=f"cells per axis of the coarsest level (at most {MAX_RESOLUTION})"
    )
    max_resolution: Int | None = Field(
        None,
        ge=2,
        le=MAX_RESOLUTION,
        description=f"cells per axis of the finest level (default: 256 on CPU, 2048 on CUDA; at most {MAX_RESOLUTION})",
    )
    hidden_dim: Int = Field(64, gt=0, le=4096, description="width of the shared MLP trunk (at most 4096)")
    hidden_layers: Int = Field(
        1, ge=0, le=64, description="hidden ReLU layers of the trunk (0: linear heads on the encoding; at most 64)"
    )
    mlp_lr_scale: Float = Field(
        1.0, gt=0, le=1e6, description="learning rate of the MLP = lr * this (the table uses lr; at most 1e6)"
    )

    # Occupancy grid (instant-NGP): samples in cells recorded as empty are skipped.
    occupancy_resolution: Int = Field(
        64, ge=0, le=512,
        description="cells per axis of the occupancy grid: samples in cells whose density stays below "
        "occupancy_threshold are skipped (0: none, every in-box sample is encoded; at most 512)",
    )
    occupancy_threshold: Float = Field(
        0.01, gt=0, lt=1, description="a cell is empty while one ray step through it would be less opaque than this (0..1)"
    )
    occupancy_every: Int = Field(16, ge=1, le=100000, description="steps between refreshes of the occupancy record")
    occupancy_warmup: Int = Field(
        100, ge=0, le=1000000, description="steps before the occupancy grid skips anything (the object forms first)"
    )

    @field_validator("grid_size", mode="before")
    @classmethod
    def _three_sizes(cls, value: Any) -> int | list[int]:
        return check_grid_size(value)

    @model_validator(mode="after")
    def _resolutions_ordered(self) -> "HashGridOptions":
        if self.max_resolution is not None and self.max_resolution < self.base_resolution:
            raise ValueError(
                f"max_resolution: {self.max_resolution} is below base_resolution {self.base_resolution}"
            )
        check_ray_samples(self.grid_size, self.step_ratio)
        levels = self.levels if self.levels is not None else GPU_DEFAULTS["levels"]
        log2_t = self.log2_table_size if self.log2_table_size is not None else GPU_DEFAULTS["log2_table_size"]
        floats = levels * 2**log2_t * self.features_per_level
        if floats > MAX_TABLE_FLOATS:
            raise ValueError(
                f"log2_table_size: levels x 2**log2_table_size x features_per_level = {floats:,} table entries "
                f"(at most {MAX_TABLE_FLOATS:,}; unset sizes count at their CUDA defaults)"
            )
        return self

    def preflight(self, ctx: BuildContext) -> None:
        """What building the field checks: a forced tinycudann backend must be importable, on CUDA."""
        if self.backend == "tinycudann":
            from sjc_core.devices import as_device
            from sjc_plugins.fields.hashgrid import _import_tcnn, choose_backend

            tcnn, why = _import_tcnn()
            choose_backend(self.backend, as_device(ctx.device), None if tcnn is not None else why)


@hookimpl
def register_fields(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="hashgrid",
        factory=build_hashgrid_field,
        description="Multi-resolution hash encoding + small MLPs (pure PyTorch; tiny-cuda-nn on CUDA)",
        options=HashGridOptions,
    )


def build_hashgrid_field(options: HashGridOptions, ctx: BuildContext) -> HashGridField:
    """The registered factory: imports the field (and torch) on first use."""
    from sjc_plugins.fields.hashgrid import HashGridField

    return HashGridField(options, ctx)
