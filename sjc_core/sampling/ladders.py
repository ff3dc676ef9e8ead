"""Noise-level schedules for 2D sampling: Karras et al.'s sigmas, snapped to a prior's
discrete ladder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch


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
