"""The emptiness regulariser: most of space should be empty.

``weight * mean(log(1 + scale * w))`` over every ray sample of a render, multiplied by
``multiplier`` once training has passed ``step_fraction`` (the reference's schedule: 1e4,
scale 10, times 20 after half the steps). The mean runs over ALL samples the bundle had,
out-of-box ones included (``render.sample_count``), as the reference's does; those
contribute log(1) = 0 and only enlarge the denominator.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from sjc_core.contracts import BuildContext, RenderOutput
from sjc_core.hookspecs import hookimpl
from sjc_core.recipe import Float


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


class EmptinessLoss:
    """Callable loss; its weight schedule depends on training progress only."""

    def __init__(self, options: EmptinessOptions) -> None:
        self.options = options

    def current_weight(self, progress: float) -> float:
        o = self.options
        return o.weight * (o.multiplier if progress >= o.step_fraction else 1.0)

    def __call__(self, render: RenderOutput, progress: float) -> torch.Tensor:
        count = max(int(render.sample_count), 1)
        total = torch.log1p(self.options.scale * render.weights).sum()
        return self.current_weight(progress) * total / count


def build_emptiness(options: EmptinessOptions, ctx: BuildContext) -> EmptinessLoss:
    return EmptinessLoss(options)


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="emptiness",
        factory=build_emptiness,
        description="Sparsity: weight * mean log(1 + scale * w) over all samples, stepped up late in training",
        options=EmptinessOptions,
    )
