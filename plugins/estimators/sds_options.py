"""The ``sds`` estimator's options and registration, without torch (see
:mod:`sjc_plugins.estimators.sds` for the estimator itself).

Guidance is not an estimator option: the prior applies it. With the stable-diffusion prior
the gradient equals threestudio's ``compute_grad_sds`` (negated: an ascent direction) when
the prior reads guidance_scale in threestudio's convention, ``cond + s (cond - uncond)``;
sjc's default, ``uncond + s (cond - uncond)`` (stable-dreamfusion's), is it at s + 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sjc_core.hookspecs import hookimpl
from sjc_core.recipes.values import MAX_N_NOISE, MAX_SIGMA, Float, Int

if TYPE_CHECKING:
    from sjc_core.contracts import BuildContext
    from sjc_plugins.estimators.sds import SdsEstimator

MAX_SCALE = 1e6


def check_fraction_pair(value: tuple[float, float]) -> tuple[float, float]:
    """A [low, high] pair of ladder fractions inside [0, 1]."""
    low, high = value
    if not (0.0 <= low <= 1.0 and 0.0 <= high <= 1.0):
        raise ValueError(f"each end must lie in [0, 1] (fractions of the noise ladder; got [{low:g}, {high:g}])")
    if low > high:
        raise ValueError(f"low end {low:g} is above high end {high:g}")
    return value


# Options sds and ism share: one definition, same meaning.
LADDER_SIGMA_MIN = Field(
    None, gt=0, le=MAX_SIGMA, description=f"cut the ladder below this sigma first (at most {MAX_SIGMA:g}); default: its bottom"
)
LADDER_SIGMA_MAX = Field(
    None, gt=0, le=MAX_SIGMA, description=f"cut the ladder above this sigma first (at most {MAX_SIGMA:g}); default: its top"
)
GRADIENT_SCALE = Field(1.0, gt=0, le=MAX_SCALE, description=f"multiplies the gradient (0 < scale <= {MAX_SCALE:g})")


def check_sigma_order(sigma_min: float | None, sigma_max: float | None) -> None:
    if sigma_min is not None and sigma_max is not None and sigma_min > sigma_max:
        raise ValueError(f"sigma_min: {sigma_min} is above sigma_max {sigma_max}")


class SdsOptions(BaseModel):
    """Options of the ``sds`` estimator (a recipe's ``[estimator]`` table with ``name = "sds"``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    t_range: tuple[Float, Float] = Field(
        (0.02, 0.98),
        description="timestep drawn uniformly between these fractions of the ladder (DreamFusion: 0.02..0.98)",
    )
    weighting: Literal["sds", "uniform", "fantasia3d"] = Field(
        "sds", description="w(t): sds = 1 - alpha_bar (DreamFusion), uniform = 1, fantasia3d = sqrt(alpha_bar)(1 - alpha_bar)"
    )
    sigma_min: Float | None = LADDER_SIGMA_MIN
    sigma_max: Float | None = LADDER_SIGMA_MAX
    n_noise: Int = Field(1, gt=0, le=MAX_N_NOISE, description=f"noises averaged per step, one batched call (at most {MAX_N_NOISE})")
    scale: Float = GRADIENT_SCALE

    @field_validator("t_range")
    @classmethod
    def _fractions(cls, value: tuple[float, float]) -> tuple[float, float]:
        return check_fraction_pair(value)

    @model_validator(mode="after")
    def _ordered(self) -> "SdsOptions":
        check_sigma_order(self.sigma_min, self.sigma_max)
        return self


@hookimpl
def register_estimators(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="sds",
        factory=build_sds,
        description="DreamFusion's score distillation: uniform timestep, w(t) (D - y) / sigma; guidance is the prior's "
        "(stable-diffusion: uncond + s (cond - uncond), as stable-dreamfusion; a threestudio guidance_scale s is "
        "s + 1 here, or set prior.guidance_convention = 'threestudio')",
        options=SdsOptions,
    )


def build_sds(options: SdsOptions, ctx: BuildContext) -> SdsEstimator:
    """The registered factory: imports the estimator (and torch) on first use."""
    from sjc_plugins.estimators.sds import SdsEstimator

    return SdsEstimator(options)
