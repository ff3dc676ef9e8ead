"""The ``gaussians`` field's options and registration, without torch (see voxel_options).

Learning rates are fractions of the recipe's ``lr`` (one per parameter kind), so the
recipe's decay and ``--set lr=...`` act on every group together, as for the other fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sjc_plugins.fields.voxel_options import (  # same background options as the ray-marched fields
    BACKGROUND_FROM_PRIOR,
    BG_LR,
    BG_TEXTURE_SIZE,
    BOX_HALF,
    FEATURE_ACTIVATION,
    Activation,
)

from sjc_core.hookspecs import hookimpl
from sjc_core.recipes.values import Flag, Float, Int

if TYPE_CHECKING:
    from sjc_plugins.fields.gaussians import GaussianField

    from sjc_core.contracts import BuildContext

MAX_SPLATS = 2_000_000  # 2M splats: ~0.5 GB of parameters and Adamax state for 4 channels

InitShape = Literal["box", "sphere"]
Backend = Literal["auto", "torch", "gsplat"]


def _scale(default: float, what: str) -> float:
    return Field(default, ge=0, le=1e6, description=f"learning rate of the {what} = lr * this (0..1e6)")


class GaussianOptions(BaseModel):
    """Options of the ``gaussians`` field (3D Gaussian splats rendered by rasterisation)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    box_half: Float = BOX_HALF
    init_splats: Int = Field(2000, ge=1, le=MAX_SPLATS, description=f"splats at step 0 (1..{MAX_SPLATS:,})")
    init_shape: InitShape = Field("sphere", description="where the first splats are drawn: in a ball or in the box")
    init_radius: Float = Field(
        0.5, gt=0, le=1, description="the ball's radius (or the box's half side) as a fraction of box_half (0..1]"
    )
    init_scale: Float = Field(
        0.05, gt=0, le=1, description="initial splat radius (standard deviation), as a fraction of box_half (0..1]"
    )
    init_opacity: Float = Field(0.1, gt=0, lt=1, description="initial opacity of every splat (0..1)")
    sh_degree: Int = Field(
        0, ge=0, le=1, description="spherical-harmonic degree of the colours: 0 (view-independent) or 1"
    )
    feature_activation: Activation = FEATURE_ACTIVATION
    bg_texture_size: Int = BG_TEXTURE_SIZE
    bg_lr: Float = BG_LR
    background_from_prior: Flag = BACKGROUND_FROM_PRIOR
    near: Float = Field(0.05, gt=0, le=100, description="splats nearer the camera than this are not drawn")

    means_lr: Float = _scale(0.01, "positions")
    features_lr: Float = _scale(0.25, "colours")
    opacity_lr: Float = _scale(0.25, "opacities (logits)")
    scales_lr: Float = _scale(0.05, "log scales")
    rotations_lr: Float = _scale(0.02, "rotations (quaternions)")

    densify_start: Int = Field(100, ge=0, le=10_000_000, description="first step that may densify or prune")
    densify_stop: Int = Field(
        1000, ge=0, le=10_000_000, description="no densification after this step (pruning stops too)"
    )
    densify_every: Int = Field(100, ge=1, le=10_000_000, description="steps between densify/prune passes")
    grad_threshold: Float = Field(
        0.05,
        ge=0,
        le=1e9,
        description="a splat whose mean screen-space gradient (pixels) passes this is cloned (small) or split (large)",
    )
    split_scale: Float = Field(
        0.04, gt=0, le=1, description="splats larger than this (fraction of box_half) split instead of cloning"
    )
    prune_opacity: Float = Field(0.01, ge=0, lt=1, description="splats below this opacity are removed when pruning")
    prune_scale: Float = Field(
        0.5, gt=0, le=10, description="splats larger than this (fraction of box_half) are removed when pruning"
    )
    max_splats: Int = Field(
        50_000, ge=1, le=MAX_SPLATS, description=f"densification stops adding at this many splats (at most {MAX_SPLATS:,})"
    )
    backend: Backend = Field(
        "auto", description="rasteriser: torch (plain PyTorch, any device), gsplat (CUDA), auto = gsplat when usable"
    )

    @model_validator(mode="after")
    def _consistent(self) -> GaussianOptions:
        if self.init_splats > self.max_splats:
            raise ValueError(f"init_splats: {self.init_splats} is above max_splats {self.max_splats}")
        if self.densify_stop < self.densify_start:
            raise ValueError(f"densify_stop: {self.densify_stop} is before densify_start {self.densify_start}")
        return self

    def preflight(self, ctx: BuildContext) -> None:
        """A forced gsplat backend must import and have a CUDA device."""
        if self.backend == "gsplat":
            from sjc_plugins.fields.splat_gsplat import choose_backend

            from sjc_core.devices import as_device

            choose_backend(self.backend, as_device(ctx.device))


@hookimpl
def register_fields(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="gaussians",
        factory=build_gaussian_field,
        description="3D Gaussian splats, rasterised (plain PyTorch on any device; gsplat on CUDA when installed)",
        options=GaussianOptions,
    )


def build_gaussian_field(options: GaussianOptions, ctx: BuildContext) -> GaussianField:
    """The registered factory: imports the field (and torch) on first use."""
    from sjc_plugins.fields.gaussians import GaussianField

    return GaussianField(options, ctx)
