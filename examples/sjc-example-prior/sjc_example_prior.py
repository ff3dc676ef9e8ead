"""An example third-party sjc plugin: a prior and a score estimator, one module.

The prior ``gaussian`` is the exact denoiser of a Gaussian image distribution. If images are
drawn from N(mean, std^2 I), then after adding noise of level sigma the posterior mean has
a closed form::

    D(x; sigma) = E[x0 | x0 + sigma*n = x] = (std^2 * x + sigma^2 * mean) / (std^2 + sigma^2)

It needs no weights, so it is a complete, honest prior in a few lines: useful as a
template for writing plugins and as a smoke test for the engine (SJC with it pulls every
view toward the mean colour).

The estimator ``noise-free`` scores the render itself: ``g = (D(y; sigma) - y) / sigma``,
sigma times the score of the noised distribution at y, with no noise drawn; its schedule
walks sigma geometrically from ``sigma_max`` down to ``sigma_min``. For a Gaussian prior it
is exactly the mean of PAAS's gradient (D is linear), so it is PAAS without the variance.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pydantic
import torch
from pydantic import BaseModel, ConfigDict, Field

from sjc_core.contracts import BuildContext, View
from sjc_core.hookspecs import hookimpl

class GaussianOptions(BaseModel):
    """Options of the ``gaussian`` prior (a recipe's ``[prior]`` table)."""

    model_config = ConfigDict(extra="forbid")

    mean: tuple[float, float, float] = Field(
        (0.5, 0.5, 0.5), description="mean colour of the images, RGB in [0, 1]"
    )
    std: float = Field(0.5, gt=0, description="per-pixel standard deviation, in the [-1, 1] model range")
    resolution: int = Field(64, gt=0, le=1024, description="image size the prior scores (pixels)")
    sigma_min: float = Field(0.002, gt=0, description="smallest noise level of the ladder")
    sigma_max: float = Field(80.0, gt=0, description="largest noise level of the ladder")
    levels: int = Field(1000, ge=2, description="number of noise levels (a geometric ladder)")

    @pydantic.field_validator("mean")
    @classmethod
    def _in_unit_range(cls, mean: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(not 0.0 <= c <= 1.0 for c in mean):
            raise ValueError("each channel must lie in [0, 1]")
        return mean

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> "GaussianOptions":
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min {self.sigma_min} must be below sigma_max {self.sigma_max}")
        return self


class GaussianPrior:
    """The optimal denoiser of N(mean, std^2 I) over [3, resolution, resolution] images."""

    channels = 3
    value_range = (-1.0, 1.0)

    def __init__(self, options: GaussianOptions, device: torch.device) -> None:
        self.resolution = options.resolution
        self.std = options.std
        # Colours are given in [0, 1]; the prior works in the [-1, 1] range of pixel models.
        # Kept in float64 and cast per call, so double-precision inputs get exact results.
        mean = torch.tensor(options.mean, dtype=torch.float64, device=device) * 2 - 1
        self.mean = mean.view(1, 3, 1, 1)
        # Ascending geometric ladder, like the discrete levels a trained model knows.
        self.sigmas = torch.logspace(
            math.log10(options.sigma_min), math.log10(options.sigma_max), options.levels, device=device
        )

    def condition(self, view: View | None) -> Any:
        """The distribution ignores views and prompts: there is nothing to condition on."""
        return None

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        """Posterior mean E[x0 | x] for x [B, 3, H, W]; sigma a scalar or [B]."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        var = self.std**2
        return (var * x + sigma**2 * self.mean.to(x)) / (var + sigma**2)

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Map the [-1, 1] model range to [0, 1] pictures."""
        return ((x + 1) / 2).clamp(0, 1)


def build_gaussian(options: GaussianOptions, ctx: BuildContext) -> GaussianPrior:
    """Factory called by sjc with the validated ``[prior]`` options."""
    return GaussianPrior(options, ctx.device)


class NoiseFreeOptions(BaseModel):
    """Options of the ``noise-free`` estimator (a recipe's ``[estimator]`` table)."""

    model_config = ConfigDict(extra="forbid")

    sigma_min: float = Field(0.1, gt=0, description="last sigma of the geometric schedule")
    sigma_max: float = Field(10.0, gt=0, description="first sigma of the geometric schedule")

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> "NoiseFreeOptions":
        if self.sigma_min > self.sigma_max:
            raise ValueError(f"sigma_min {self.sigma_min} is above sigma_max {self.sigma_max}")
        return self


class NoiseFreeEstimator:
    """g = (D(y; sigma) - y) / sigma at the clean render; sigma annealed from sigma_max to sigma_min."""

    def __init__(self, options: NoiseFreeOptions) -> None:
        self.options = options

    def schedule(self, prior: Any, steps: int, rng: np.random.Generator) -> np.ndarray:
        """Deterministic: the run's generator is not needed (a resumed run gets the same levels)."""
        ramp = np.arange(steps, dtype=np.float64) / max(steps - 1, 1)
        return self.options.sigma_max * (self.options.sigma_min / self.options.sigma_max) ** ramp

    @torch.no_grad()
    def gradient(
        self, prior: Any, y: torch.Tensor, sigma: float, progress: float, cond: Any, generator: Any
    ) -> torch.Tensor:
        sigma_t = torch.full((), float(sigma), dtype=y.dtype, device=y.device)  # no host round trip
        return (prior.denoise(y, sigma_t, cond).to(y.dtype) - y) / sigma


def build_noise_free(options: NoiseFreeOptions, ctx: BuildContext) -> NoiseFreeEstimator:
    """Factory called by sjc with the validated ``[estimator]`` options."""
    return NoiseFreeEstimator(options)


@hookimpl
def register_estimators(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="noise-free",
        factory=build_noise_free,
        description="Score of the render itself, (D(y; sigma) - y) / sigma, no noise; sigma annealed geometrically",
        options=NoiseFreeOptions,
    )


@hookimpl
def register_priors(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="gaussian",
        factory=build_gaussian,
        description="Exact denoiser of a Gaussian image distribution N(mean, std^2 I); needs no weights",
        options=GaussianOptions,
    )
