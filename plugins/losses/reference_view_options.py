"""The reference-view loss's options and registration, without torch (see
:mod:`sjc_plugins.losses.reference_view` for the loss itself)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sjc_core.hookspecs import hookimpl
from sjc_core.recipes.values import MAX_PATH_LENGTH, MAX_RADIUS, Float, PathText, bounded
from sjc_plugins.reference_picture import (
    DEFAULT_TOLERANCE,
    read_picture,
    resolve_picture_path,
)

if TYPE_CHECKING:
    from sjc_core.contracts import BuildContext
    from sjc_plugins.losses.reference_view import ReferenceViewLoss

WHERE = "losses.reference-view"  # the dotted path `--set` accepts for this loss's options


class ReferenceViewOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    image: bounded(PathText, min_length=1, max_length=MAX_PATH_LENGTH) | None = Field(  # type: ignore[valid-type]
        None,
        description="the input picture (relative to the recipe's folder); default: the prior's input picture (zero123)",
    )
    elevation_deg: Float | None = Field(
        None, gt=-90, lt=90, description="elevation of the picture's camera (degrees); default: the prior's, else 0"
    )
    azimuth_deg: Float | None = Field(
        None, ge=-720, le=720, description="azimuth of the picture's camera (degrees, 0 = front); default: the prior's, else 0"
    )
    distance: Float | None = Field(
        None, gt=0, le=MAX_RADIUS, description="distance of the picture's camera; default: the prior's, else 2.0"
    )
    fov_deg: Float | None = Field(
        None, gt=0, lt=180, description="field of view of the picture (degrees); default: the prior's, else 49.1"
    )
    near: Float | None = Field(
        None,
        ge=0,
        le=MAX_RADIUS,
        description="samples nearer than this to the picture's camera are skipped, so voxels just in front of it cannot "
        "paint the picture (default: half the camera's distance, as sjc fit; 0: none)",
    )
    rgb_weight: Float = Field(
        0.1,
        ge=0,
        le=1e9,
        description="colour: weight * sum (render - picture)^2 / 2 at the picture's camera (latent fields: the "
        "picture's VAE latent), so the gradient is weight * (render - picture), like PAAS's (render - D) / sigma",
    )
    mask_weight: Float = Field(
        0.05, ge=0, le=1e9, description="silhouette: weight * sum (opacity - alpha)^2 / 2 (alpha channel, or the background colour)"
    )
    background: Literal["auto"] | tuple[Float, Float, Float] = Field(
        "auto",
        description="pictures without alpha: RGB in [0, 1] behind the object (its silhouette is what differs); "
        "auto: the median colour of the picture's border",
    )
    background_tolerance: Float = Field(
        DEFAULT_TOLERANCE, ge=0, lt=1, description="pictures without alpha: max channel difference that still counts as background"
    )
    warmup_fraction: Float = Field(
        1.0,
        ge=0,
        le=1,
        description="fraction of training over which the weights ramp up linearly (DreamGaussian: the whole run; "
        "0: full weight from the start)",
    )
    warmup_start: Float = Field(0.0, ge=0, le=1, description="the weights' factor at the start of the warm-up")

    @field_validator("background", mode="before")
    @classmethod
    def _background_choice(cls, value: Any) -> Any:
        """One error line for any bad value (a plain union would report one per member)."""
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        channel = lambda c: isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and 0 <= c <= 1
        if isinstance(value, (list, tuple)) and len(value) == 3 and all(channel(c) for c in value):
            return tuple(float(c) for c in value)
        raise ValueError("expected 'auto' or three numbers in [0, 1] (RGB)")

    @model_validator(mode="after")
    def _some_weight(self) -> ReferenceViewOptions:
        if self.rgb_weight == 0 and self.mask_weight == 0:
            raise ValueError("rgb_weight: rgb_weight and mask_weight are both 0: the loss would do nothing")
        return self

    def read(self, image: str, base_dir: Any, where: str) -> Any:
        """The picture at ``image`` (relative to ``base_dir``), read and checked; problems name ``where``."""
        return read_picture(resolve_picture_path(image, base_dir), where, self.background, self.background_tolerance)

    def preflight(self, ctx: BuildContext) -> None:
        """The picture, when this loss names one, exists, reads and shows something (the
        prior's own picture is the prior's check)."""
        if self.image is not None:
            self.read(self.image, ctx.base_dir, f"{WHERE}.image")


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="reference-view",
        factory=build_reference_view,
        description="Image-to-3D: the render at the input picture's camera should be the picture (colour and silhouette)",
        options=ReferenceViewOptions,
    )


def build_reference_view(options: ReferenceViewOptions, ctx: BuildContext) -> ReferenceViewLoss:
    """The registered factory: imports the loss (and torch) on first use."""
    from sjc_plugins.losses.reference_view import build_reference_view as build

    return build(options, ctx)
