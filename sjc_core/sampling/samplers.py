"""2D tools: the Karras et al. (2022) Heun sampler, 2D PAAS ascent on a bare denoiser, and
2D ascent with any estimator (:func:`estimator_ascent`).

Everything here takes a denoiser callable ``denoise(x, sigma) -> D(x; sigma)`` in the
variance-exploding convention (``x_sigma = x + sigma * n``), so any prior works once its
conditioning is bound (``lambda x, s: prior.denoise(x, s, cond)``). The functions are pure:
no prior, no files, no global random state (noise comes from the generators passed in).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from sjc_core.sampling.noise import Generators, randn

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# callback(step_done, total_steps, sigma, x) after every step, for progress bars.
Callback = Callable[[int, int, float, torch.Tensor], None]


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
    ``... - z_bk`` (Eq. 15), the estimator of :func:`sjc_core.training.paas.paas_gradient`; for B = 1
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
    batch do not interact. ``sigmas`` comes from :func:`sjc_core.training.paas.sigma_schedule`
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
    """:func:`paas_ascent` with any estimator (:class:`sjc_core.training.estimation.Estimator`).

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
