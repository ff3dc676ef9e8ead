"""Interval score matching (ISM, LucidDreamer) on the VE denoiser contract.

LucidDreamer replaces SDS's random noise with a deterministic DDIM trajectory: the render
is lightly noised (at the lowest level it starts from), inverted by DDIM steps up to a level
s, stepped once more to t > s, and the update is the difference of the noise predictions
at the two ends, ``w(t) (eps_cond(x_t, t) - eps_inv(x_s, s))`` with
``w = sqrt((1 - alpha_bar) / alpha_bar)``, which is sigma_t in VE terms.

In VE form a DDIM step from level a to level b is ``x_b = D_a + sigma_b eps_a`` with
``D_a = D(x_a; sigma_a)`` and ``eps_a = (x_a - D_a) / sigma_a``, so ``x_t = D_s + sigma_t eps_s``
and ``sigma_t (eps_s - eps_t) = D(x_t; sigma_t) - D(x_s; sigma_s)``: the ascent direction is
the difference of the denoiser's predictions across the interval,

    g = scale * (D(x_t; sigma_t, cond) - D(x_s; sigma_s, cond_inv)).

Conditioning, as LucidDreamer: the inversion and D(x_s) use the prior's ``inverse_condition()``
unguided (stable-diffusion: ``inverse_prompt``, LucidDreamer's ``inverse_text``, empty by
default; a prior without one: ``unconditional()``, else ``condition(None)``); the view's
condition, guided with the negative prompt, only enters D(x_t).

Levels are LucidDreamer's indices: t uniform in [int(N t0), hi) where hi falls from
int(N warmup_t_max) to int(N t1) over the warm-up, s = max(t - delta, 0) with delta
annealed from interval_start to interval, and the inversion starts at
max(s - stride * inversion_steps, 0). Index i is the level of ladder tick i + offset, the
prior's ``steps_offset`` (0 when it has none): LucidDreamer indexes diffusers' DDIM
timesteps set to every training step, which with SD's ``steps_offset = 1`` start at 1
(indices are capped so that i + offset stays on the ladder).

Against LucidDreamer's ``train_step`` (grad = w(alphas[t]) (eps_guided(x_t) - eps_inv(x_s))
on the latents, descended): with ``x_VE = x_VP sqrt(1 + sigma^2)``, D is the clean-latent
estimate in both conventions and w = sigma_t, so ``g = -(scale / grad_scale) * grad``
exactly, no sqrt(1 + sigma^2) left (tests/test_ism_luciddreamer.py). Its small offset noise
(0.1 per channel) and random horizontal flip are left out, and so is its inversion guidance
(``denoise_guidance_scale``, 1 by default). LucidDreamer subtracts raw UNet outputs, which
are noise predictions for epsilon models only; with a v model this takes the eps they imply.
Each step costs (inversion steps taken) + 2 denoiser calls, against PAAS's 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from sjc_core.training.estimation import (
    Generators,
    denoise_at,
    draw_noise,
    fraction_index,
    ladder_window,
    level_index,
)
from sjc_plugins.estimators.ism_options import IsmOptions


class IsmEstimator:
    """Interval score matching; see the module docstring for the formula and the levels."""

    def __init__(self, options: IsmOptions) -> None:
        self.options = options
        self._window: tuple[Any, np.ndarray, int] | None = None  # (prior, its levels, index offset)
        self._last_denoised: torch.Tensor | None = None

    def window(self, prior: Any) -> np.ndarray:
        """The ladder levels t and s are drawn from, read from the prior once (by ``schedule``,
        before training): inside a step it is already on the host."""
        return self._levels(prior)[0]

    def offset(self, prior: Any) -> int:
        """Ladder tick of index 0: the prior's ``steps_offset`` (LucidDreamer's timesteps), else 0."""
        return self._levels(prior)[1]

    def _levels(self, prior: Any) -> tuple[np.ndarray, int]:
        if self._window is None or self._window[0] is not prior:
            window = ladder_window(prior, self.options.sigma_min, self.options.sigma_max, "estimator")
            offset = min(max(int(getattr(prior, "steps_offset", 0) or 0), 0), window.size - 1)
            self._window = (prior, window, offset)
        return self._window[1], self._window[2]

    def warm(self, progress: float) -> float:
        """1 at the start of training, 0 once the warm-up is over (LucidDreamer's warm_up_rate)."""
        if self.options.warmup <= 0:
            return 0.0
        return 1.0 - min(progress / self.options.warmup, 1.0)

    def interval_steps(self, count: int, progress: float) -> int:
        """delta in ladder indices: interval, plus the annealed part of (interval_start - interval)."""
        end = max(1, round(self.options.interval * count))
        start = max(1, round(self.options.interval_start * count))
        return max(1, end + math.ceil(self.warm(progress) * (start - end)))

    def levels(self, count: int, t_index: int, progress: float) -> tuple[int, int, int]:
        """(start, s, stride) ladder indices of the inversion for a given t."""
        s_index = max(t_index - self.interval_steps(count, progress), 0)
        stride = max(1, round(self.options.inversion_stride * count))
        start = max(s_index - stride * self.options.inversion_steps, 0)
        return start, s_index, stride

    def schedule(self, prior: Any, steps: int, rng: np.random.Generator) -> np.ndarray:
        """sigma_t of every step: index uniform in [int(N t0), high) with high warmed up as LucidDreamer does."""
        window, offset = self._levels(prior)
        count = window.size
        low = fraction_index(count, self.options.t_range[0])
        high = fraction_index(count, self.options.t_range[1])
        extra = max(int(count * (self.options.warmup_t_max - self.options.t_range[1])), 0)
        warm = np.array([self.warm(i / steps) for i in range(steps)], dtype=np.float64)
        highs = np.clip(high + (extra * warm).astype(np.int64), low + 1, count)
        index = np.minimum(rng.integers(low, highs), count - 1 - offset)
        return window[index + offset].astype(np.float64)

    def inversion_condition(self, prior: Any, cond: Any) -> Any:
        """What the inversion and D(x_s) condition on (see the ``inversion_condition`` option)."""
        choice = self.options.inversion_condition
        if choice == "view":
            return cond
        return _bound_to_views(prior, self._prompt_condition(prior, choice), cond)

    @staticmethod
    def _prompt_condition(prior: Any, choice: str) -> Any:
        names = ("inverse_condition", "unconditional") if choice == "inverse" else ("unconditional",)
        for name in names:
            method = getattr(prior, name, None)
            if callable(method):
                return method()
        return prior.condition(None)

    @torch.no_grad()
    def gradient(
        self, prior: Any, y: torch.Tensor, sigma: float, progress: float, cond: Any, generator: Generators
    ) -> torch.Tensor:
        window, offset = self._levels(prior)
        levels = window[offset:]  # levels[i]: LucidDreamer's index i
        t_index = max(level_index(window, sigma) - offset, 0)
        start, s_index, stride = self.levels(window.size, t_index, progress)
        inverse = self.inversion_condition(prior, cond)
        y = y.detach()
        x = y + float(levels[start]) * draw_noise(y, 1, generator)[:, 0]
        current = start
        for _ in range(self.options.inversion_steps):  # DDIM inversion, deterministic
            if current == s_index:
                break
            following = min(current + stride, s_index)
            denoised = denoise_at(prior, x, float(levels[current]), inverse)
            x = denoised + (float(levels[following]) / float(levels[current])) * (x - denoised)
            current = following
        sigma_s, sigma_t = float(levels[s_index]), float(levels[t_index])
        denoised_s = denoise_at(prior, x, sigma_s, inverse)
        x_t = denoised_s + (sigma_t / sigma_s) * (x - denoised_s)
        denoised_t = denoise_at(prior, x_t, sigma_t, cond)
        self._last_denoised = denoised_t  # the viewer's denoised target (a reference)
        return self.options.scale * (denoised_t - denoised_s)

    def denoised_target(self) -> torch.Tensor | None:
        """The last step's guided prediction at t (what ISM moves the render's inversion toward)."""
        return self._last_denoised


def _bound_to_views(prior: Any, inverse: Any, cond: Any) -> Any:
    """A multi-view prior's inversion condition takes this step's cameras from the view's
    condition (its optional ``with_views_of(condition, like)``); other priors' is used as is."""
    bind = getattr(prior, "with_views_of", None)
    return bind(inverse, cond) if callable(bind) else inverse
