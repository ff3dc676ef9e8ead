"""2D tools: the Karras et al. (2022) sampler and 2D PAAS ascent on a bare denoiser, and
2D ascent with any estimator (:func:`estimator_ascent`).

Everything else here takes a denoiser callable ``denoise(x, sigma) -> D(x; sigma)`` in the
variance-exploding convention (``x_sigma = x + sigma * n``), so any prior works once its
conditioning is bound (``lambda x, s: prior.denoise(x, s, cond)``). The functions are pure:
no prior, no files, no global random state (noise comes from the generators passed in).

Generators: ``None`` (torch's global generator), one ``torch.Generator`` for the whole
batch, or a list of them, one per image; with a list, image i's noise depends only on
its own generator, so an image does not change when the batch around it does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None
# callback(step_done, total_steps, sigma, x) after every step, for progress bars.
Callback = Callable[[int, int, float, torch.Tensor], None]


# -- schedules ----------------------------------------------------------------------------
def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """``n`` noise levels from sigma_max down to sigma_min, then a final 0: float64 [n + 1].

    Level i is ``(sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``:
    even steps in sigma^(1/rho), which for rho = 7 spends most steps at small sigma where
    the image's detail is decided (Karras et al. 2022, Eq. 5). ``n = 1`` gives sigma_max.
    """
    if n < 1:
        raise ValueError(f"karras_sigmas needs n >= 1 (got {n})")
    if not (0 < sigma_min <= sigma_max):
        raise ValueError(f"karras_sigmas needs 0 < sigma_min <= sigma_max (got {sigma_min}, {sigma_max})")
    if rho <= 0:
        raise ValueError(f"karras_sigmas needs rho > 0 (got {rho})")
    ramp = np.arange(n, dtype=np.float64) / max(n - 1, 1)
    top, bottom = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    levels = (top + ramp * (bottom - top)) ** rho
    levels[0], levels[-1] = (sigma_max, sigma_min) if n > 1 else (sigma_max, sigma_max)  # exact ends, no round-off
    return np.append(levels, 0.0)


def snap_to_ladder(sigmas: np.ndarray | Sequence[float], ladder: torch.Tensor | np.ndarray) -> np.ndarray:
    """Each positive sigma replaced by the ladder value nearest in log sigma; zeros stay 0.

    A discrete-time model only knows its ladder's levels; stepping between the levels it
    actually evaluates keeps the ODE's step sizes consistent with what the model sees.
    Length-preserving; neighbouring levels may become equal where the ladder is sparse.
    """
    values = np.asarray(sigmas, dtype=np.float64)
    rungs = np.sort(np.asarray(torch.as_tensor(ladder).detach().cpu().double().reshape(-1)))
    if rungs.size == 0:
        raise ValueError("snap_to_ladder needs a non-empty ladder")
    if bool((rungs <= 0).any()):
        raise ValueError("snap_to_ladder needs a positive ladder")
    out = values.copy()
    positive = values > 0
    if positive.any():
        logs = np.log(rungs)
        nearest = np.abs(np.log(values[positive])[:, None] - logs[None, :]).argmin(axis=1)
        out[positive] = rungs[nearest]
    return out


def drop_repeats(sigmas: np.ndarray) -> np.ndarray:
    """Consecutive equal levels removed (a zero-length step costs model calls for nothing)."""
    values = np.asarray(sigmas, dtype=np.float64)
    if values.size == 0:
        return values
    keep = np.ones(values.size, dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


# -- noise --------------------------------------------------------------------------------
def generators_for(seed: int, count: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per image, image i seeded from (seed, i) so images are independent."""
    gens = []
    for index in range(count):
        state = int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])
        gen = torch.Generator(device=torch.device(device))
        gen.manual_seed(state)
        gens.append(gen)
    return gens


def randn(shape: Sequence[int], like: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """Standard normal noise of ``shape`` (first dimension = batch) on ``like``'s device and dtype."""
    shape = tuple(shape)
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"{len(gens)} generators for a batch of {shape[0]}")
    rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=like.dtype).to(like.device) for g in gens]
    return torch.stack(rows)


# -- the Karras sampler ------------------------------------------------------------------
@torch.no_grad()
def sample_heun(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: np.ndarray | Sequence[float],
    *,
    s_churn: float = 0.0,
    s_min: float = 0.0,
    s_max: float = math.inf,
    s_noise: float = 1.0,
    snap: Callable[[float], float] | None = None,
    generator: Generators = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Integrate the probability-flow ODE from ``sigmas[0]`` to ``sigmas[-1]`` (Karras Alg. 2).

    ``x`` is the start at noise ``sigmas[0]`` (pure noise: ``sigma_max * randn``). Each step
    is Heun's second-order method, except a step that lands on sigma = 0, which is a plain
    Euler step (the ODE's slope at 0 is undefined; the step lands on D itself).

    Stochastic churn: at levels inside [s_min, s_max] the level is first raised to
    ``sigma_hat = sigma (1 + gamma)``, gamma = min(s_churn / steps, sqrt(2) - 1), by adding
    fresh noise of std ``s_noise * sqrt(sigma_hat^2 - sigma^2)``. ``snap`` (the prior's ladder
    where it is discrete) moves sigma_hat onto a level the model knows; when the snapped
    level is not above sigma, the step takes no churn.
    """
    levels = [float(s) for s in np.asarray(sigmas, dtype=np.float64).reshape(-1)]
    steps = len(levels) - 1
    if steps < 1:
        raise ValueError("sample_heun needs at least two sigmas")
    if any(b > a for a, b in zip(levels, levels[1:])):
        raise ValueError("sample_heun needs non-increasing sigmas")
    gamma_max = min(s_churn / steps, math.sqrt(2.0) - 1.0) if s_churn > 0 else 0.0

    def slope(value: torch.Tensor, level: float) -> torch.Tensor:
        sigma_t = torch.tensor(level, dtype=value.dtype, device=value.device)
        return (value - denoise(value, sigma_t).to(value.dtype)) / level

    for i in range(steps):
        sigma, target = levels[i], levels[i + 1]
        if sigma <= 0:
            break
        sigma_hat = sigma
        if gamma_max > 0 and s_min <= sigma <= s_max:
            raised = sigma * (1.0 + gamma_max)
            raised = float(snap(raised)) if snap is not None else raised
            if raised > sigma:
                sigma_hat = raised
                x = x + randn(x.shape, x, generator) * (s_noise * math.sqrt(sigma_hat**2 - sigma**2))
        d = slope(x, sigma_hat)
        dt = target - sigma_hat
        euler = x + d * dt
        if target > 0:
            x = x + (d + slope(euler, target)) * (dt / 2.0)
        else:
            x = euler
        if callback is not None:
            callback(i + 1, steps, sigma_hat, x)
    return x


# -- 2D PAAS ascent ----------------------------------------------------------------------
@torch.no_grad()
def paas_gradient_batch(
    denoise: Denoiser,
    y: torch.Tensor,
    sigma: float,
    n_noise: int = 1,
    var_red: bool = True,
    generator: Generators = None,
) -> torch.Tensor:
    """The PAAS direction for every image of a batch y [B, C, H, W] (one denoiser call).

    Image b gets ``mean_k (D(y_b + sigma n_bk) - y_b) / sigma`` (Eq. 16, ``var_red``) or
    ``... - z_bk`` (Eq. 15), the estimator of :func:`sjc_core.paas.paas_gradient`; for B = 1
    and the same generator it draws the same noise, so it returns the same g.
    """
    if y.ndim != 4:
        raise ValueError(f"paas_gradient_batch expects y [B, C, H, W], got {tuple(y.shape)}")
    if n_noise < 1:
        raise ValueError(f"n_noise must be >= 1 (got {n_noise})")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (got {sigma})")
    batch, shape = y.shape[0], tuple(y.shape[1:])
    y = y.detach()
    if generator is None or isinstance(generator, torch.Generator):
        noise = randn((batch * n_noise, *shape), y, generator).reshape(batch, n_noise, *shape)
    else:
        gens = list(generator)
        if len(gens) != batch:
            raise ValueError(f"{len(gens)} generators for a batch of {batch}")
        noise = torch.stack([randn((n_noise, *shape), y, g) for g in gens])
    z = y[:, None] + sigma * noise  # [B, K, C, H, W]
    sigma_t = torch.tensor(float(sigma), dtype=y.dtype, device=y.device)
    denoised = denoise(z.reshape(batch * n_noise, *shape), sigma_t).to(y.dtype).reshape(z.shape)
    reference = y[:, None] if var_red else z
    return ((denoised - reference) / sigma).mean(dim=1)


def paas_ascent(
    denoise: Denoiser,
    y: torch.Tensor,
    sigmas: np.ndarray | Sequence[float],
    *,
    lr: float = 0.05,
    n_noise: int = 1,
    var_red: bool = True,
    generator: Generators = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Optimise images y [B, C, H, W] directly with PAAS, one step per entry of ``sigmas``.

    The paper's 2D experiment (Fig. 4): the 3D engine's update with the renderer taken out.
    Each step computes g at that step's sigma and takes one Adamax step on the surrogate
    ``-(g * y).sum()``, whose gradient is ``-g``; Adamax works element-wise, so images in a
    batch do not interact. ``sigmas`` comes from :func:`sjc_core.paas.sigma_schedule`
    (``random`` or ``annealed``). Returns the final images (detached).
    """
    def gradient(image: torch.Tensor, sigma: float, progress: float) -> torch.Tensor:
        return paas_gradient_batch(denoise, image, sigma, n_noise=n_noise, var_red=var_red, generator=generator)

    return _adamax_ascent(y, sigmas, lr, gradient, callback)


def estimator_ascent(
    estimator: object,
    prior: object,
    y: torch.Tensor,
    sigmas: np.ndarray | Sequence[float],
    cond: object = None,
    *,
    lr: float = 0.05,
    generator: Generators = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """:func:`paas_ascent` with any estimator (:class:`sjc_core.estimation.Estimator`).

    Step i asks ``estimator.gradient(prior, y, sigmas[i], i / len(sigmas), cond, generator)``
    and takes one Adamax step on ``-(g * y).sum()``; ``sigmas`` comes from the estimator's own
    ``schedule``. With the ``paas`` estimator this is exactly :func:`paas_ascent`.
    """
    def gradient(image: torch.Tensor, sigma: float, progress: float) -> torch.Tensor:
        return estimator.gradient(prior, image, sigma, progress, cond, generator)  # type: ignore[attr-defined]

    return _adamax_ascent(y, sigmas, lr, gradient, callback)


def _adamax_ascent(
    y: torch.Tensor,
    sigmas: np.ndarray | Sequence[float],
    lr: float,
    gradient: Callable[[torch.Tensor, float, float], torch.Tensor],
    callback: Callback | None,
) -> torch.Tensor:
    """One Adamax step on the surrogate ``-(g * y).sum()`` per sigma, g = ``gradient(y, sigma,
    i / len(sigmas))``: the loop both ascents share (the 3D engine's update without the renderer)."""
    if lr <= 0:
        raise ValueError(f"lr must be > 0 (got {lr})")
    levels = [float(s) for s in np.asarray(sigmas, dtype=np.float64).reshape(-1)]
    image = y.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adamax([image], lr=lr)
    for i, sigma in enumerate(levels):
        g = gradient(image.detach(), sigma, i / len(levels))
        optimizer.zero_grad(set_to_none=True)
        image.grad = -g.to(image.dtype)  # d/dy of the surrogate -(g * y).sum()
        optimizer.step()
        if callback is not None:
            callback(i + 1, len(levels), sigma, image.detach())
    return image.detach()


# -- on a prior ---------------------------------------------------------------------------
KARRAS_SIGMA_CAP = 80.0  # Karras et al.'s sigma_max; priors with a smaller top start there


def karras_schedule_for(
    prior: object,
    steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
) -> np.ndarray:
    """The Karras levels for a prior: its ladder's range (top capped at 80), snapped to it.

    Every prior publishes its ladder ``prior.sigmas``; discrete-time models publish the
    levels they were trained on, continuous ones (the empirical prior) a fine geometric
    ladder, so snapping always applies and costs continuous priors almost nothing. Repeated
    levels after snapping are dropped, so the result may have fewer than ``steps + 1`` entries.
    """
    sigmas = torch.as_tensor(prior.sigmas)  # type: ignore[attr-defined]
    ladder = np.sort(np.asarray(sigmas.detach().cpu().double().reshape(-1)))
    low = float(ladder[0]) if sigma_min is None else float(sigma_min)
    high = min(float(ladder[-1]), KARRAS_SIGMA_CAP) if sigma_max is None else float(sigma_max)
    if low > high:
        raise ValueError(f"sigma_min {low} is above sigma_max {high}")
    return drop_repeats(snap_to_ladder(karras_sigmas(steps, low, high, rho), ladder))


def ladder_snapper(ladder: torch.Tensor | np.ndarray) -> Callable[[float], float]:
    """``sigma -> nearest ladder level`` (for the churn's raised level)."""
    return lambda sigma: float(snap_to_ladder([sigma], ladder)[0])
