"""Noise ladders, sigma schedules and the PAAS estimator against closed forms."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from sjc_core.errors import SjcError
from sjc_core.training.paas import (
    default_sigma_range,
    geometric_ladder,
    paas_gradient,
    sd_ladder,
    sigma_schedule,
    vp_sigmas,
)
from sjc_plugins.priors.empirical import EmpiricalPrior


def sd_closed_form() -> np.ndarray:
    """SD's sigmas written out element by element (float64, no torch)."""
    sqrt_betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000)
    alpha_bar, sigmas = 1.0, []
    for root in sqrt_betas:
        alpha_bar *= 1.0 - root * root
        sigmas.append(math.sqrt((1.0 - alpha_bar) / alpha_bar))
    return np.array(sigmas)


# -- ladders --------------------------------------------------------------------------


def test_vp_sigmas_closed_form_and_checks() -> None:
    sigmas = vp_sigmas(torch.tensor([0.5, 0.2, 0.1], dtype=torch.float64))
    assert sigmas.dtype == torch.float64
    assert torch.allclose(sigmas, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="non-increasing"):
        vp_sigmas(torch.tensor([0.2, 0.5]))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        vp_sigmas(torch.tensor([1.5, 0.5]))


def test_sd_ladder_matches_closed_form_and_endpoints() -> None:
    ladder = sd_ladder()
    assert ladder.shape == (1000,)
    assert bool((ladder[1:] > ladder[:-1]).all()), "ascending"
    np.testing.assert_allclose(ladder.numpy(), sd_closed_form(), rtol=1e-12)
    assert ladder[0].item() == pytest.approx(0.0292, abs=1e-4)
    assert ladder[-1].item() == pytest.approx(14.61, abs=1e-2)


def test_default_range_is_the_reference_cut() -> None:
    ladder = sd_ladder()
    low, high = default_sigma_range(SimpleNamespace(sigmas=ladder))
    assert low == pytest.approx(0.0983, abs=1e-4) and high == pytest.approx(12.23, abs=1e-2)
    # the reference keeps us[30:-10] of the DESCENDING ladder: timesteps 10..969
    kept = ladder.flip(0)[30:-10]
    assert (low, high) == (kept.min().item(), kept.max().item())
    # a descending ladder is sorted first; the prior's own range wins when it has one
    assert default_sigma_range(SimpleNamespace(sigmas=ladder.flip(0))) == (low, high)
    own = SimpleNamespace(sigmas=ladder, default_sigma_range=(0.1, 20.0))
    assert default_sigma_range(own) == (0.1, 20.0)
    # too short to cut: the whole ladder
    assert default_sigma_range(SimpleNamespace(sigmas=torch.tensor([0.5, 1.0, 2.0]))) == (0.5, 2.0)


def test_geometric_ladder() -> None:
    ladder = geometric_ladder(0.01, 80.0, 1000)
    assert ladder[0].item() == pytest.approx(0.01, rel=1e-12) and ladder[-1].item() == pytest.approx(80.0, rel=1e-12)
    ratios = (ladder[1:] / ladder[:-1]).numpy()
    np.testing.assert_allclose(ratios, 8000.0 ** (1 / 999), rtol=1e-10)
    with pytest.raises(ValueError):
        geometric_ladder(2.0, 1.0, 10)


# -- schedules ------------------------------------------------------------------------


def test_random_schedule_is_uniform_over_the_kept_ladder() -> None:
    ladder = sd_ladder()
    low, high = default_sigma_range(SimpleNamespace(sigmas=ladder))
    kept = ladder.numpy()[10:-30]
    assert kept.size == 960
    steps = 96_000  # 100 expected draws per value
    draws = sigma_schedule("random", ladder, steps, np.random.default_rng(7), low, high)
    assert draws.shape == (steps,) and draws.dtype == np.float64
    # only ladder values, inside the range, and both ends reachable
    positions = np.searchsorted(kept, draws)
    assert np.array_equal(kept[np.clip(positions, 0, kept.size - 1)], draws)
    assert draws.min() == kept[0] and draws.max() == kept[-1]
    # Pearson's chi-square over 960 values has 959 degrees of freedom (mean 959, sd 43.8).
    # For a fixed seed the statistic is one number; asking for a p-value above 1e-4 fails
    # a uniform sampler once in 10^4 seeds, while a sampler that skips or doubles even a
    # few percent of the values lands far beyond it (p < 1e-30).
    counts = np.bincount(positions, minlength=kept.size)
    chi2 = float(((counts - 100.0) ** 2 / 100.0).sum())
    assert stats.chi2.sf(chi2, kept.size - 1) > 1e-4
    assert stats.chi2.cdf(chi2, kept.size - 1) > 1e-4  # not suspiciously regular either


def test_random_schedule_is_reproducible() -> None:
    ladder = sd_ladder()
    a = sigma_schedule("random", ladder, 500, np.random.default_rng(3), 0.1, 10.0)
    b = sigma_schedule("random", ladder, 500, np.random.default_rng(3), 0.1, 10.0)
    c = sigma_schedule("random", ladder, 500, np.random.default_rng(4), 0.1, 10.0)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0.1 and a.max() <= 10.0
    # a resumed run re-derives the same schedule and reads it from its step onwards
    longer = sigma_schedule("random", ladder, 500, np.random.default_rng(3), 0.1, 10.0)
    assert np.array_equal(longer[250:], a[250:])


def test_annealed_schedule_walks_down_the_ladder() -> None:
    ladder = sd_ladder()
    schedule = sigma_schedule("annealed", ladder, 3000, np.random.default_rng(0), 0.1, 10.0)
    kept = ladder.numpy()[(ladder.numpy() >= 0.1) & (ladder.numpy() <= 10.0)]
    assert np.all(np.diff(schedule) <= 0), "non-increasing"
    assert schedule[0] == kept[-1] and schedule[-1] == kept[0]
    assert np.isin(schedule, kept).all()
    # the rng plays no part
    again = sigma_schedule("annealed", ladder, 3000, np.random.default_rng(99), 0.1, 10.0)
    assert np.array_equal(schedule, again)
    # geometric in between: half way lies near sqrt(0.1 * 10) = 1
    assert schedule[1500] == pytest.approx(1.0, rel=0.02)


def test_annealed_on_a_geometric_ladder_is_the_ladder_reversed() -> None:
    ladder = geometric_ladder(0.1, 10.0, 50)
    schedule = sigma_schedule("annealed", ladder, 50, np.random.default_rng(0))
    assert np.array_equal(schedule, ladder.numpy()[::-1])


def test_schedule_edge_cases() -> None:
    ladder = geometric_ladder(0.1, 10.0, 5)  # 0.1, 0.316, 1, 3.16, 10
    rng = np.random.default_rng(0)
    # a range between two ladder values uses the nearest one (in log sigma)
    only = sigma_schedule("random", ladder, 20, rng, 1.2, 1.5)
    assert np.all(only == ladder[2].item())
    assert sigma_schedule("annealed", ladder, 1, rng, 0.1, 10.0).tolist() == [pytest.approx(10.0)]
    assert sigma_schedule("random", ladder, 0, rng).shape == (0,)
    with pytest.raises(SjcError, match="above"):
        sigma_schedule("random", ladder, 5, rng, 5.0, 1.0)
    with pytest.raises(SjcError, match="unknown schedule"):
        sigma_schedule("cosine", ladder, 5, rng)


# -- the PAAS estimator ---------------------------------------------------------------


class CountingPrior:
    """Wraps a prior and records every denoise call."""

    def __init__(self, inner: EmpiricalPrior) -> None:
        self.inner = inner
        self.calls: list[tuple[tuple[int, ...], torch.Tensor]] = []

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: object) -> torch.Tensor:
        self.calls.append((tuple(x.shape), sigma))
        return self.inner.denoise(x, sigma, cond)


def one_image_prior(seed: int = 0, size: int = 8) -> tuple[EmpiricalPrior, torch.Tensor]:
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return EmpiricalPrior(image), image


def test_one_image_prior_gives_the_exact_direction() -> None:
    prior, image = one_image_prior()
    y = torch.zeros(1, 3, 8, 8).uniform_(-1, 1, generator=torch.Generator().manual_seed(1))
    for sigma in (0.1, 1.0, 12.0):
        g = paas_gradient(prior, y, sigma, None, n_noise=1, var_red=True, generator=torch.Generator().manual_seed(2))
        assert g.shape == (1, 3, 8, 8)
        assert torch.equal(g, (image - y) / sigma)
        g4 = paas_gradient(prior, y, sigma, None, n_noise=4, var_red=True, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(g4, (image - y) / sigma, rtol=0, atol=1e-6)


def test_eq15_differs_by_the_mean_noise() -> None:
    prior, image = one_image_prior()
    y = torch.full((1, 3, 8, 8), 0.25)
    sigma, k = 0.5, 5
    g16 = paas_gradient(prior, y, sigma, None, n_noise=k, var_red=True, generator=torch.Generator().manual_seed(9))
    g15 = paas_gradient(prior, y, sigma, None, n_noise=k, var_red=False, generator=torch.Generator().manual_seed(9))
    noise = torch.randn((k, 3, 8, 8), generator=torch.Generator().manual_seed(9))
    # (D - z_k)/sigma = (D - y)/sigma - n_k
    torch.testing.assert_close(g16 - g15, noise.mean(0, keepdim=True), rtol=0, atol=1e-5)
    assert (g16 - g15).abs().max() > 0.1


def test_noises_are_batched_into_one_denoise_call() -> None:
    prior, _ = one_image_prior()
    counting = CountingPrior(prior)
    y = torch.zeros(1, 3, 8, 8, requires_grad=True)
    g = paas_gradient(counting, y * 1.0, 2.0, None, n_noise=6)
    assert len(counting.calls) == 1
    shape, sigma = counting.calls[0]
    assert shape == (6, 3, 8, 8) and float(sigma) == 2.0
    assert not g.requires_grad


def test_paas_matches_a_gaussian_prior_in_expectation() -> None:
    """For data ~ N(0, I), D(z) = z / (1 + sigma^2); E[g] = -sigma * y / (1 + sigma^2)."""

    class Gaussian:
        def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: object) -> torch.Tensor:
            return x / (1 + sigma**2)

    y = torch.full((1, 1, 16, 16), 0.8)
    sigma = 1.5
    expected = -sigma * y / (1 + sigma**2)
    for var_red in (True, False):
        g = paas_gradient(Gaussian(), y, sigma, None, n_noise=4000, var_red=var_red, generator=torch.Generator().manual_seed(0))
        # 4000 noises per pixel: the standard error is below 0.02 for either form
        assert (g - expected).abs().mean() < 0.02


def test_paas_input_checks() -> None:
    prior, _ = one_image_prior()
    with pytest.raises(ValueError, match="single render"):
        paas_gradient(prior, torch.zeros(2, 3, 8, 8), 1.0, None)
    with pytest.raises(ValueError, match="n_noise"):
        paas_gradient(prior, torch.zeros(1, 3, 8, 8), 1.0, None, n_noise=0)


def test_annealed_schedule_snaps_like_a_full_argmin_and_scales_to_long_runs():
    """The annealed schedule's nearest-tick search (searchsorted) picks what an argmin over
    every (step, tick) distance picks, ties to the lower tick; a million steps needs no
    steps x ladder table."""
    from sjc_core.training.paas import sd_ladder, sigma_schedule

    ladder = sd_ladder().numpy()
    low, high = 0.0983, 12.23
    got = sigma_schedule("annealed", ladder, 5000, np.random.default_rng(0), low, high)
    candidates = ladder[(ladder >= low * (1 - 1e-9)) & (ladder <= high * (1 + 1e-9))]
    ratios = np.arange(5000) / 4999
    targets = np.log(high) + ratios * (np.log(low) - np.log(high))
    brute = candidates[np.abs(targets[:, None] - np.log(candidates)[None, :]).argmin(axis=1)]
    np.testing.assert_array_equal(got, brute)
    long = sigma_schedule("annealed", ladder, 10**6, np.random.default_rng(0), low, high)
    assert long.shape == (10**6,) and long[0] == candidates[-1] and long[-1] == candidates[0]
    assert np.all(np.diff(long) <= 0)
