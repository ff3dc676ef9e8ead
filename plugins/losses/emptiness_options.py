"""The emptiness regulariser's options and registration, without torch (see
:mod:`sjc_plugins.losses.emptiness` for the loss itself)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from sjc_core.hookspecs import hookimpl
from sjc_core.recipes.values import Float

if TYPE_CHECKING:
    from sjc_core.contracts import BuildContext
    from sjc_plugins.losses.emptiness import EmptinessLoss

class EmptinessOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    weight: Float = Field(1e4, ge=0, le=1e9, description="lambda: weight of the loss before the step (0..1e9)")
    scale: Float = Field(10.0, gt=0, le=1e6, description="w is scaled by this inside log(1 + scale * w) (at most 1e6)")
    step_fraction: Float = Field(
        0.5, ge=0, le=1, description="fraction of training after which the weight is multiplied"
    )
    multiplier: Float = Field(
        20.0, ge=0, le=1e6, description="weight multiplier once progress >= step_fraction (0..1e6)"
    )


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="emptiness",
        factory=build_emptiness,
        description="Sparsity: weight * mean log(1 + scale * w) over all samples, stepped up late in training",
        options=EmptinessOptions,
    )


def build_emptiness(options: EmptinessOptions, ctx: BuildContext) -> EmptinessLoss:
    """The registered factory: imports the loss (and torch) on first use."""
    from sjc_plugins.losses.emptiness import build_emptiness as build

    return build(options, ctx)
