"""The estimator contract: what turns a rendered image into the gradient on it.

The engine asks an estimator, not PAAS directly, for the ascent direction ``g`` on a clean
render ``y`` and adds the surrogate ``-(g * y).sum()`` to its loss, so back-propagation
carries ``-g`` into the field. Estimators are plugins (``register_estimators``); the
built-ins are ``paas`` (SJC, the default), ``sds`` (DreamFusion) and ``ism`` (LucidDreamer).

An estimator owns its noise-level schedule. :meth:`Estimator.schedule` draws the level of
every step once, before training, from the run's seeded generator, so a resumed run meets
exactly the levels the uninterrupted one would have met; :meth:`Estimator.gradient` runs
inside the training step and must make no host round trip (no ``.item()``, no numpy on
device tensors: whatever it needs from the ladder it prepares in ``schedule``). Its only
randomness inside a step is the ``generator`` it is handed (the run checkpoints it).

Everything is in the VE convention ``z = y + sigma * n`` with the prior's denoiser
``D(z; sigma)``; in DDPM terms ``eps_hat = (z - D) / sigma`` and ``alpha_bar = 1 / (1 + sigma^2)``.
This module also holds the small helpers the built-in estimators share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from sjc_core.errors import SjcError
from sjc_core.training.paas import _ascending, _inside

Generators = torch.Generator | Sequence[torch.Generator] | None


@runtime_checkable
class Estimator(Protocol):
    """A score estimator (see the module docstring for the rules it follows)."""

    def schedule(self, prior: Any, steps: int, rng: np.random.Generator) -> np.ndarray:
        """The noise level of every step, float64 [steps]; ``rng`` is the run's schedule stream."""
        ...

    def gradient(
        self, prior: Any, y: torch.Tensor, sigma: float, progress: float, cond: Any, generator: Generators
    ) -> torch.Tensor:
        """The ascent direction for renders y [B, C, H, W] (same shape, no graph).

        ``sigma`` is this step's entry of :meth:`schedule`, ``progress`` the step over the
        run's steps (in [0, 1)), ``cond`` the prior's conditioning for the view, ``generator``
        one torch generator or one per image of the batch.
        """
        ...


# ----------------------------------------------------------------------------- ladders


def ladder_window(prior: Any, sigma_min: float | None, sigma_max: float | None, where: str) -> np.ndarray:
    """The prior's ladder (ascending float64) inside [sigma_min, sigma_max]; missing ends: the ladder's.

    When no level lies inside, the level nearest to the range (in log sigma) is used, as
    :func:`sjc_core.training.paas.sigma_schedule` does. Reads the ladder to the host: call it when
    planning, never inside a step.
    """
    ladder = _ascending(prior.sigmas)
    low = float(ladder[0]) if sigma_min is None else float(sigma_min)
    high = float(ladder[-1]) if sigma_max is None else float(sigma_max)
    if low > high:
        raise SjcError(f"{where}.sigma_min: {low:g} is above {where}.sigma_max {high:g}")
    window = _inside(ladder, low, high)
    if window.size == 0:
        middle = np.log(low * high) / 2
        window = ladder[[int(np.argmin(np.abs(np.log(ladder) - middle)))]]
    return window


def fraction_index(count: int, fraction: float) -> int:
    """Index of a fraction of a ladder of ``count`` levels, as DDPM code cuts its timesteps
    (``int(count * fraction)``), kept inside the ladder."""
    return min(max(int(count * fraction), 0), count - 1)


def level_index(window: np.ndarray, sigma: float) -> int:
    """Index of the window level nearest to ``sigma`` in log (exact for levels the schedule drew)."""
    if window.size == 1:
        return 0
    logs, target = np.log(window), np.log(sigma)
    upper = int(np.clip(np.searchsorted(logs, target), 1, window.size - 1))
    lower = upper - 1
    return lower if abs(target - logs[lower]) <= abs(target - logs[upper]) else upper


# ----------------------------------------------------------------------------- noise and weights


def draw_noise(y: torch.Tensor, n_noise: int, generator: Generators) -> torch.Tensor:
    """Standard normal noise [B, K, C, H, W] on y's device and dtype.

    One generator draws the whole block in one call; with a list, image b's noise comes from
    its own generator only (a picture does not change when the batch around it does).
    """
    from sjc_core.sampling.noise import randn

    batch, shape = y.shape[0], tuple(y.shape[1:])
    if generator is None or isinstance(generator, torch.Generator):
        return randn((batch * n_noise, *shape), y, generator).reshape(batch, n_noise, *shape)
    gens = list(generator)
    if len(gens) != batch:
        raise ValueError(f"{len(gens)} generators for a batch of {batch}")
    return torch.stack([randn((n_noise, *shape), y, g) for g in gens])


def denoise_at(prior: Any, z: torch.Tensor, sigma: float, cond: Any) -> torch.Tensor:
    """``prior.denoise`` of z [N, C, H, W] at one level, in z's dtype (sigma filled in on z's
    device: a fill, not a blocking copy)."""
    sigma_t = torch.full((), float(sigma), dtype=z.dtype, device=z.device)
    return prior.denoise(z, sigma_t, cond).to(z.dtype)


WEIGHTINGS = ("sds", "uniform", "fantasia3d")


def sds_weight(kind: str, sigma: float) -> float:
    """DreamFusion's w(t) at a VE level: ``sds`` is 1 - alpha_bar = sigma^2 / (1 + sigma^2)
    (DreamFusion's sigma_t^2), ``uniform`` is 1, ``fantasia3d`` is sqrt(alpha_bar)(1 - alpha_bar)."""
    alpha_bar = 1.0 / (1.0 + sigma * sigma)
    if kind == "sds":
        return 1.0 - alpha_bar
    if kind == "uniform":
        return 1.0
    if kind == "fantasia3d":
        return alpha_bar**0.5 * (1.0 - alpha_bar)
    raise ValueError(f"unknown weighting {kind!r} (known: {', '.join(WEIGHTINGS)})")
