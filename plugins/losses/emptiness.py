"""The emptiness regulariser: most of space should be empty.

``weight * mean(log(1 + scale * w))`` over every ray sample of a render, multiplied by
``multiplier`` once training has passed ``step_fraction`` (the reference's schedule: 1e4,
scale 10, times 20 after half the steps). The mean runs over ALL samples the bundle had,
out-of-box ones included (``render.sample_count``), as the reference's does; those
contribute log(1) = 0 and only enlarge the denominator.
"""

from __future__ import annotations

import torch

from sjc_core.contracts import BuildContext, RenderOutput
from sjc_plugins.losses.emptiness_options import EmptinessOptions  # noqa: F401 (re-exported)


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


