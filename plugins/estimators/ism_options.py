"""The ``ism`` estimator's options and registration, without torch (see
:mod:`sjc_plugins.estimators.ism` for the estimator itself).

Defaults are LucidDreamer's published ones, written as fractions of the noise ladder (its
1000 DDIM timesteps): t in [0.02, 0.5] after a warm-up that starts at 0.98, interval
delta_T = 80 (annealed from 100), x_s reached by at most 5 inversion steps of 200, the
inversion with the prior's inverse prompt (LucidDreamer's ``inverse_text``, empty), the
warm-up 1500 of 5000 iterations. Ladder indices are LucidDreamer's: shifted by the prior's
``steps_offset`` (diffusers' DDIM timesteps), so with SD's scheduler index i is timestep i + 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sjc_core.hookspecs import hookimpl
from sjc_core.recipes.values import Float, Int
from sjc_plugins.estimators.sds_options import (
    GRADIENT_SCALE,
    LADDER_SIGMA_MAX,
    LADDER_SIGMA_MIN,
    check_fraction_pair,
    check_sigma_order,
)

if TYPE_CHECKING:
    from sjc_core.contracts import BuildContext
    from sjc_plugins.estimators.ism import IsmEstimator

MAX_INVERSION_STEPS = 1000


class IsmOptions(BaseModel):
    """Options of the ``ism`` estimator (a recipe's ``[estimator]`` table with ``name = "ism"``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    t_range: tuple[Float, Float] = Field(
        (0.02, 0.5), description="t drawn uniformly between these fractions of the ladder once warmed up (0.02..0.5)"
    )
    warmup_t_max: Float = Field(
        0.98, ge=0, le=1, description="upper end of t at the start; it falls linearly to t_range's over the warm-up"
    )
    warmup: Float = Field(
        0.3, ge=0, le=1, description="fraction of training the warm-up lasts (LucidDreamer: 1500 of 5000 steps; 0: none)"
    )
    interval: Float = Field(0.08, gt=0, le=1, description="delta_T: s = t - interval, a fraction of the ladder (80/1000)")
    interval_start: Float = Field(
        0.1, gt=0, le=1, description="the interval at the start of the warm-up, annealed to interval (100/1000)"
    )
    inversion_stride: Float = Field(
        0.2, gt=0, le=1, description="DDIM inversion step from the render up to s, a fraction of the ladder (200/1000)"
    )
    inversion_steps: Int = Field(
        5,
        ge=0,
        le=MAX_INVERSION_STEPS,
        description=f"most inversion steps to s (0: noise the render straight to s; at most {MAX_INVERSION_STEPS})",
    )
    inversion_condition: Literal["inverse", "unconditional", "view"] = Field(
        "inverse",
        description="conditioning of the inversion and of D(x_s), unguided: inverse (LucidDreamer: the prior's "
        "inverse_condition(), for stable-diffusion its inverse_prompt, empty by default; else as unconditional), "
        "unconditional (the prior's unconditional(), for stable-diffusion the negative prompt; else condition(None)) "
        "or the view's own; the guidance at t is the prior's, in its guidance_convention",
    )
    sigma_min: Float | None = LADDER_SIGMA_MIN
    sigma_max: Float | None = LADDER_SIGMA_MAX
    scale: Float = GRADIENT_SCALE

    @field_validator("t_range")
    @classmethod
    def _fractions(cls, value: tuple[float, float]) -> tuple[float, float]:
        return check_fraction_pair(value)

    @model_validator(mode="after")
    def _ordered(self) -> "IsmOptions":
        check_sigma_order(self.sigma_min, self.sigma_max)
        if self.warmup_t_max < self.t_range[1]:
            raise ValueError(f"warmup_t_max: {self.warmup_t_max:g} is below t_range's upper end {self.t_range[1]:g}")
        return self


@hookimpl
def register_estimators(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="ism",
        factory=build_ism,
        description="LucidDreamer's interval score matching: DDIM-invert the render to s with the inverse prompt, "
        "then D(x_t) - D(x_s); guidance only at t, the prior's (stable-diffusion: uncond + s (cond - uncond), "
        "LucidDreamer's own convention)",
        options=IsmOptions,
    )


def build_ism(options: IsmOptions, ctx: BuildContext) -> IsmEstimator:
    """The registered factory: imports the estimator (and torch) on first use."""
    from sjc_plugins.estimators.ism import IsmEstimator

    return IsmEstimator(options)
