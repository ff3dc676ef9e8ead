"""Noise ladders, sigma schedules and the PAAS (perturb-and-average scoring) estimator.

Everything is in the variance-exploding convention ``z = y + sigma * n``. A *ladder* is the
ascending set of discrete noise levels a prior knows; a *schedule* is the sigma used at
each training step, precomputed for the whole run so that a resumed run draws exactly the
sigmas the uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from sjc_core.errors import SjcError

# The reference drops the 10 smallest and the 30 largest values of SD's ladder
# (timesteps 10..969): sigma from about 0.098 to 12.2.
DROP_SMALLEST = 10
DROP_LARGEST = 30
SCHEDULES = ("random", "annealed")


def vp_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """VE noise levels of a VP model, sqrt((1 - a) / a), in timestep order (ascending).

    Computed in float64: near t = 0, 1 - a is tiny and float32 would lose most digits.
    """
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if a.ndim != 1 or a.numel() == 0:
        raise ValueError("alphas_cumprod must be a non-empty 1-D tensor")
    if bool(((a <= 0) | (a > 1)).any()):
        raise ValueError("alphas_cumprod must lie in (0, 1]")
    sigmas = torch.sqrt((1 - a) / a)
    if bool((sigmas[1:] < sigmas[:-1]).any()):
        raise ValueError("alphas_cumprod must be non-increasing (sigmas ascending with the timestep)")
    return sigmas


def sd_ladder(count: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's ladder: scaled-linear betas (linear in sqrt(beta)), ascending sigmas.

    Endpoints for the defaults: about 0.0292 and 14.6.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, count, dtype=torch.float64) ** 2
    return vp_sigmas(torch.cumprod(1 - betas, dim=0))


def geometric_ladder(sigma_min: float, sigma_max: float, count: int) -> torch.Tensor:
    """``count`` sigmas evenly spaced in log from sigma_min to sigma_max (both included)."""
    if not (0 < sigma_min <= sigma_max):
        raise ValueError(f"geometric ladder needs 0 < sigma_min <= sigma_max (got {sigma_min}, {sigma_max})")
    if count < 1:
        raise ValueError(f"geometric ladder needs count >= 1 (got {count})")
    if count == 1:
        return torch.tensor([float(sigma_min)], dtype=torch.float64)
    return torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), count, dtype=torch.float64))


def default_sigma_range(prior: Any) -> tuple[float, float]:
    """The prior's own ``default_sigma_range`` if it has one, else the reference's cut.

    The cut drops the 10 smallest and 30 largest ladder values (kept whole when the ladder
    is too short for that).
    """
    own = getattr(prior, "default_sigma_range", None)
    if own is not None:
        low, high = (float(v) for v in own)
        return low, high
    ladder = _ascending(prior.sigmas)
    if ladder.size > DROP_SMALLEST + DROP_LARGEST:
        ladder = ladder[DROP_SMALLEST : ladder.size - DROP_LARGEST]
    return float(ladder[0]), float(ladder[-1])


def _ascending(ladder: torch.Tensor | np.ndarray) -> np.ndarray:
    values = np.sort(np.asarray(torch.as_tensor(ladder).detach().cpu().double().reshape(-1)))
    if values.size == 0:
        raise SjcError("prior.sigmas: the prior's noise ladder is empty")
    return values


def _inside(ladder: np.ndarray, low: float, high: float) -> np.ndarray:
    """Ladder values in [low, high] with a relative tolerance (the range often comes from the ladder)."""
    tol = 1e-9
    keep = (ladder >= low * (1 - tol)) & (ladder <= high * (1 + tol))
    return ladder[keep]


def sigma_schedule(
    kind: str,
    ladder: torch.Tensor | np.ndarray,
    steps: int,
    rng: np.random.Generator,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> np.ndarray:
    """Sigmas for every step of a run, float64 [steps].

    ``random``: each step draws uniformly (with replacement) among the ladder values inside
    [sigma_min, sigma_max], as the reference's ``np.random.choice`` does; the draws are the
    only use of ``rng``.

    ``annealed``: step i targets the geometric interpolation
    ``sigma_max * (sigma_min / sigma_max) ** (i / (steps - 1))`` (so the first step uses the
    largest sigma and the last the smallest) and snaps it to the nearest ladder value inside
    the range, measured in log sigma. Snapping is a monotone map, so the schedule is
    non-increasing; it walks the ladder evenly in log sigma whatever the ladder's spacing.
    ``rng`` is not used.

    When no ladder value lies inside the range, the ladder value nearest to it is used.
    Missing ends default to the ladder's own ends.
    """
    if kind not in SCHEDULES:
        raise SjcError(f"paas.schedule: unknown schedule {kind!r} (known: {', '.join(SCHEDULES)})")
    if steps < 0:
        raise SjcError(f"steps: must be >= 0 (got {steps})")
    values = _ascending(ladder)
    low = float(values[0]) if sigma_min is None else float(sigma_min)
    high = float(values[-1]) if sigma_max is None else float(sigma_max)
    if low <= 0 or high <= 0:
        raise SjcError(f"paas.sigma_min/sigma_max: must be > 0 (got {low}, {high})")
    if low > high:
        raise SjcError(f"paas.sigma_min: {low} is above paas.sigma_max {high}")
    candidates = _inside(values, low, high)
    if candidates.size == 0:
        middle = math.sqrt(low * high)
        candidates = values[[int(np.argmin(np.abs(np.log(values) - math.log(middle))))]]
    if steps == 0:
        return np.zeros(0, dtype=np.float64)
    if kind == "random":
        return rng.choice(candidates, size=steps, replace=True).astype(np.float64)
    ratios = np.arange(steps, dtype=np.float64) / max(steps - 1, 1)
    targets = np.log(high) + ratios * (np.log(low) - np.log(high))
    return candidates[_nearest(np.log(candidates), targets)].astype(np.float64)


def _nearest(ascending: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of the value nearest each target in an ascending array, the lower one on a tie
    (what argmin over all distances gives), in O(steps log ladder) time and O(steps) memory."""
    if ascending.size == 1:
        return np.zeros(targets.size, dtype=np.int64)
    upper = np.clip(np.searchsorted(ascending, targets), 1, ascending.size - 1)
    lower = upper - 1
    take_lower = np.abs(targets - ascending[lower]) <= np.abs(targets - ascending[upper])
    return np.where(take_lower, lower, upper)


@torch.no_grad()
def paas_gradient(
    prior: Any,
    y: torch.Tensor,
    sigma: float,
    cond: Any,
    n_noise: int = 1,
    var_red: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The PAAS ascent direction g for a clean render y [1, C, H, W] (returned [1, C, H, W]).

    Draws ``n_noise`` noises, scores z_k = y + sigma * n_k with ONE batched
    ``prior.denoise`` call, and averages ``(D(z_k) - y) / sigma`` (Eq. 16, ``var_red``) or
    ``(D(z_k) - z_k) / sigma`` (Eq. 15). The two differ by the mean noise, which is zero in
    expectation but not per draw, so Eq. 16 has the lower variance. The engine ascends g
    by adding the surrogate ``-(g * y).sum()`` to its loss.
    """
    if y.ndim != 4 or y.shape[0] != 1:
        raise ValueError(f"paas_gradient expects a single render [1, C, H, W], got {tuple(y.shape)}")
    if n_noise < 1:
        raise ValueError(f"n_noise must be >= 1 (got {n_noise})")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (got {sigma})")
    y = y.detach()
    shape = (n_noise, *y.shape[1:])
    gen_device = generator.device if generator is not None else y.device
    noise = torch.randn(shape, generator=generator, device=gen_device, dtype=y.dtype).to(y.device)
    z = y + sigma * noise
    sigma_t = torch.full((), float(sigma), dtype=y.dtype, device=y.device)  # a fill, not a blocking copy
    denoised = prior.denoise(z, sigma_t, cond).to(y.dtype)
    reference = y if var_red else z
    return ((denoised - reference) / sigma).mean(dim=0, keepdim=True)


class PaasEstimator:
    """SJC's estimator, the engine's default (``[estimator] name = "paas"``, or the legacy ``[paas]``).

    Its schedule is :func:`sigma_schedule` (random or annealed) over ``[sigma_min, sigma_max]``,
    missing ends from the prior's :func:`default_sigma_range`; its gradient is
    :func:`paas_gradient` for one render, :func:`sjc_core.sampling.samplers.paas_gradient_batch` for a
    batch or per-image generators. These are the calls the engine and ``sjc sample --method
    paas`` made before estimators were plugins, so a ``[paas]`` recipe gives the same numbers.
    ``progress`` plays no part.
    """

    def __init__(self, options: Any) -> None:
        self.options = options  # sjc_core.recipes.model.PaasConfig
        self._last: tuple[torch.Tensor, torch.Tensor, float] | None = None

    def denoised_target(self) -> torch.Tensor | None:
        """The last step's denoised target y + sigma * g (the mean of D over the noise draws with
        ``var_red``; without it, that mean less sigma times the mean noise), for the viewer.
        Only references are kept per step: this is computed when someone asks."""
        if self._last is None:
            return None
        y, g, sigma = self._last
        return (y + sigma * g).detach()

    def schedule(self, prior: Any, steps: int, rng: np.random.Generator) -> np.ndarray:
        low, high = default_sigma_range(prior)
        o = self.options
        return sigma_schedule(
            o.schedule,
            prior.sigmas,
            steps,
            rng,
            sigma_min=o.sigma_min if o.sigma_min is not None else low,
            sigma_max=o.sigma_max if o.sigma_max is not None else high,
        )

    def gradient(self, prior: Any, y: torch.Tensor, sigma: float, progress: float, cond: Any, generator: Any) -> torch.Tensor:
        o = self.options
        if y.shape[0] == 1 and (generator is None or isinstance(generator, torch.Generator)):
            g = paas_gradient(prior, y, sigma, cond, n_noise=o.n_noise, var_red=o.var_red, generator=generator)
        else:
            from sjc_core.sampling.samplers import paas_gradient_batch

            def denoise(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
                return prior.denoise(x, s, cond)

            g = paas_gradient_batch(denoise, y, sigma, n_noise=o.n_noise, var_red=o.var_red, generator=generator)
        self._last = (y.detach(), g, float(sigma))
        return g


def build_paas(options: Any, ctx: Any) -> PaasEstimator:
    """Factory of the ``paas`` estimator (options: :class:`sjc_core.recipes.model.PaasConfig`)."""
    return PaasEstimator(options)
