"""The centre-depth regulariser's options and registration, without torch (see
:mod:`sjc_plugins.losses.center_depth` for the loss itself)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from sjc_core.hookspecs import hookimpl
from sjc_core.recipes.values import Float

if TYPE_CHECKING:
    from sjc_core.contracts import BuildContext
    from sjc_plugins.losses.center_depth import CenterDepthLoss

class CenterDepthOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    weight: Float = Field(
        10.0, ge=0, le=1e9, description="lambda (the reference's depth_weight; its prompts use 10 to 100; at most 1e9)"
    )
    center_fraction: Float = Field(
        50 / 64, gt=0, lt=1, description="side of the centre window as a fraction of the image (50 of 64 pixels)"
    )
    epsilon: Float = Field(
        1e-3,
        gt=0,
        le=1,
        description="below this depth gap -log is continued by its tangent line (keeps the loss finite; at most 1)",
    )


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="center-depth",
        factory=build_center_depth,
        description="Keep the object centred: the depth map's centre should be nearer than its border",
        options=CenterDepthOptions,
    )


def build_center_depth(options: CenterDepthOptions, ctx: BuildContext) -> CenterDepthLoss:
    """The registered factory: imports the loss (and torch) on first use."""
    from sjc_plugins.losses.center_depth import build_center_depth as build

    return build(options, ctx)
