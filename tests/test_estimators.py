"""The estimators (paas, sds, ism) against closed forms, and through the engine.

A Gaussian image distribution N(mu, s^2 I) has the exact denoiser
``D(x; sigma) = mu + a (x - mu)`` with ``a = s^2 / (s^2 + sigma^2)``: every estimator's
gradient is then a closed-form expression of the render, the noise it drew and the levels
it chose, checked here to float64 round-off. The engine tests check that ``[paas]`` through
the new plugin kind is the old code path bit for bit, that a resumed run continues every
estimator's schedule, and that no estimator makes a host round trip inside a step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_device_step import FIELDS, HOST_INPUT_HELPERS, device_path, empirical_prior, sd_prior, write_recipe  # noqa: F401

from host_guard import forbid_host_sync
from sjc_core.plugins import load_registry
from sjc_core.recipes.model import PaasConfig
from sjc_core.recipes.recipe import load_recipe
from sjc_core.runs import engine
from sjc_core.runs.folder import RunFolder, _restore, _save
from sjc_core.training.estimation import Estimator, sds_weight
from sjc_core.training.paas import (
    PaasEstimator,
    default_sigma_range,
    geometric_ladder,
    paas_gradient,
    sigma_schedule,
)
from sjc_plugins.estimators.ism import IsmEstimator
from sjc_plugins.estimators.ism_options import IsmOptions
from sjc_plugins.estimators.sds import SdsEstimator
from sjc_plugins.estimators.sds_options import SdsOptions

STD = 0.4
MEANS = {None: 0.3, "front": -0.2}  # the unconditional mean, and the mean for the view "front"


class GaussianPrior:
    """Exact denoiser of N(mu_cond, STD^2 I) over [3, 4, 4] images; a 1000-level geometric ladder."""

    channels, resolution, value_range = 3, 4, (-1.0, 1.0)

    def __init__(self) -> None:
        self.sigmas = geometric_ladder(0.01, 80.0, 1000)

    def condition(self, view):  # type: ignore[no-untyped-def]
        return None if view is None else view

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:  # type: ignore[no-untyped-def]
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        a = STD**2 / (STD**2 + sigma**2)
        return MEANS[cond] + a * (x - MEANS[cond])


def a_of(sigma: float) -> float:
    return STD**2 / (STD**2 + sigma**2)


@pytest.fixture
def render() -> torch.Tensor:
    return torch.linspace(-1, 1, 48, dtype=torch.float64).view(1, 3, 4, 4)


def noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_builtins_follow_the_estimator_contract() -> None:
    for estimator in (PaasEstimator(PaasConfig()), SdsEstimator(SdsOptions()), IsmEstimator(IsmOptions())):
        assert isinstance(estimator, Estimator)


# -- closed forms on the Gaussian -----------------------------------------------------------


@pytest.mark.parametrize("var_red", [True, False])
def test_paas_gradient_is_its_closed_form(render: torch.Tensor, var_red: bool) -> None:
    prior, sigma, mu = GaussianPrior(), 0.7, MEANS["front"]
    estimator = PaasEstimator(PaasConfig(n_noise=3, var_red=var_red))
    g = estimator.gradient(prior, render, sigma, 0.0, "front", torch.Generator().manual_seed(4))
    n = noise(4, (3, 3, 4, 4))
    a = a_of(sigma)
    # Eq. 16: mean (D(y + sigma n) - y) / sigma; Eq. 15: mean (D(z) - z) / sigma
    expected = (1 - a) * (mu - render) / sigma + (a if var_red else a - 1) * n.mean(dim=0, keepdim=True)
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia3d"])
def test_sds_gradient_is_dreamfusions_closed_form(render: torch.Tensor, weighting: str) -> None:
    prior, sigma, mu = GaussianPrior(), 1.3, MEANS["front"]
    estimator = SdsEstimator(SdsOptions(weighting=weighting, n_noise=2, scale=3.0))
    g = estimator.gradient(prior, render, sigma, 0.0, "front", torch.Generator().manual_seed(9))
    n = noise(9, (2, 3, 4, 4))
    alpha_bar = 1 / (1 + sigma**2)
    w = {"sds": 1 - alpha_bar, "uniform": 1.0, "fantasia3d": alpha_bar**0.5 * (1 - alpha_bar)}[weighting]
    assert sds_weight(weighting, sigma) == pytest.approx(w, rel=1e-15)
    # DreamFusion's own form: descend w (eps_hat - n), eps_hat = (z - D(z)) / sigma, z = y + sigma n
    z = render + sigma * n
    eps_hat = (z - (mu + a_of(sigma) * (z - mu))) / sigma
    torch.testing.assert_close(g, -3.0 * w * (eps_hat - n).mean(dim=0, keepdim=True), rtol=1e-12, atol=1e-12)
    # ...and the closed form in the render and the mean noise
    a = a_of(sigma)
    expected = 3.0 * w * ((1 - a) * (mu - render) / sigma + a * n.mean(dim=0, keepdim=True))
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-12)


def test_sds_expectation_is_the_weighted_score(render: torch.Tensor) -> None:
    """Averaged over noises, SDS is w(sigma) * sigma * grad log p_sigma(y)."""
    prior, sigma, mu = GaussianPrior(), 0.9, MEANS[None]
    g = SdsEstimator(SdsOptions(n_noise=256)).gradient(prior, render, sigma, 0.0, None, torch.Generator().manual_seed(1))
    score = (mu - render) / (STD**2 + sigma**2)
    w = sds_weight("sds", sigma)
    noise_std = w * a_of(sigma) / 16  # the mean noise of 256 draws, as it reaches g
    torch.testing.assert_close(g, w * sigma * score, atol=5 * noise_std, rtol=0)
    assert float((g - w * sigma * score).abs().max()) > 0.1 * noise_std  # it did draw noise


def ddim_factor(sigma_a: float, sigma_b: float) -> float:
    """One VE DDIM step a -> b on the Gaussian: x_b - mu = f (x_a - mu)."""
    return (STD**2 + sigma_a * sigma_b) / (STD**2 + sigma_a**2)


@pytest.mark.parametrize(
    "t_index, progress, steps, path",
    [
        (500, 1.0, 5, [0, 200, 400, 420]),  # after warm-up: delta 80, s = 420, strides of 200 from 0
        (500, 0.0, 5, [0, 200, 400]),  # start of warm-up: delta 100, s = 400
        (500, 0.15, 5, [0, 200, 400, 410]),  # half-way: delta 80 + ceil(0.5 * 20) = 90
        (999, 1.0, 5, [0, 200, 400, 600, 800, 919]),  # five strides reach s = 919
        (999, 1.0, 2, [519, 719, 919]),  # two strides: start at s - 400 (noised there)
        (999, 1.0, 0, [919]),  # no inversion: the render noised straight to s
        (60, 1.0, 5, [0]),  # t below the interval: s = 0, no inversion step
    ],
)
@pytest.mark.parametrize("inversion", ["unconditional", "view"])
def test_ism_gradient_is_its_closed_form(
    render: torch.Tensor, t_index: int, progress: float, steps: int, path: list[int], inversion: str
) -> None:
    prior = GaussianPrior()
    ladder = prior.sigmas.numpy()
    estimator = IsmEstimator(IsmOptions(inversion_condition=inversion, inversion_steps=steps, scale=2.0))
    g = estimator.gradient(prior, render, float(ladder[t_index]), progress, "front", torch.Generator().manual_seed(3))
    mu_inv = MEANS[None] if inversion == "unconditional" else MEANS["front"]
    mu = MEANS["front"]
    # x at the start level, then DDIM inversion along the path, all with the inversion's mean
    x = render + float(ladder[path[0]]) * noise(3, (1, 3, 4, 4))
    for a_index, b_index in zip(path, path[1:]):
        x = mu_inv + ddim_factor(float(ladder[a_index]), float(ladder[b_index])) * (x - mu_inv)
    sigma_s, sigma_t = float(ladder[path[-1]]), float(ladder[t_index])
    d_s = mu_inv + a_of(sigma_s) * (x - mu_inv)
    x_t = mu_inv + ddim_factor(sigma_s, sigma_t) * (x - mu_inv)
    d_t = mu + a_of(sigma_t) * (x_t - mu)
    torch.testing.assert_close(g, 2.0 * (d_t - d_s), rtol=1e-11, atol=1e-12)
    # LucidDreamer's form: descend w (eps(x_t) - eps(x_s)) with w = sqrt((1 - a_bar) / a_bar) = sigma_t
    eps_t, eps_s = (x_t - d_t) / sigma_t, (x - d_s) / sigma_s
    torch.testing.assert_close(g, -2.0 * sigma_t * (eps_t - eps_s), rtol=1e-10, atol=1e-11)
    if inversion == "view":  # one mean: the interval shrinks x_s - mu by a known factor
        factor = STD**2 * sigma_t * (sigma_s - sigma_t) / ((STD**2 + sigma_s**2) * (STD**2 + sigma_t**2))
        torch.testing.assert_close(g, 2.0 * factor * (x - mu), rtol=1e-10, atol=1e-12)


def test_ism_uses_the_priors_unconditional_when_it_has_one(render: torch.Tensor) -> None:
    class WithUnconditional(GaussianPrior):
        def unconditional(self):  # type: ignore[no-untyped-def]
            return "front"

    ladder = GaussianPrior().sigmas
    sigma = float(ladder[300])
    plain = IsmEstimator(IsmOptions(inversion_condition="view"))
    own = IsmEstimator(IsmOptions())
    expected = plain.gradient(GaussianPrior(), render, sigma, 1.0, "front", torch.Generator().manual_seed(0))
    got = own.gradient(WithUnconditional(), render, sigma, 1.0, "front", torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


# -- schedules -------------------------------------------------------------------------------


def test_sds_draws_timesteps_uniformly_over_its_fraction_of_the_ladder() -> None:
    prior = GaussianPrior()
    ladder = prior.sigmas.numpy()
    sigmas = SdsEstimator(SdsOptions()).schedule(prior, 40_000, np.random.default_rng(0))
    index = np.searchsorted(ladder, sigmas)
    np.testing.assert_array_equal(ladder[index], sigmas)  # ladder levels, exactly
    assert index.min() == 20 and index.max() == 980  # int(0.02 N) .. int(0.98 N), both ends included
    counts = np.bincount(index - 20, minlength=961)
    from scipy import stats

    assert stats.chisquare(counts).pvalue > 1e-3
    cut = SdsEstimator(SdsOptions(sigma_min=0.1, sigma_max=10.0, t_range=(0.0, 1.0)))
    drawn = cut.schedule(prior, 5000, np.random.default_rng(1))
    assert drawn.min() >= 0.1 * (1 - 1e-9) and drawn.max() <= 10.0 * (1 + 1e-9)


def test_ism_schedule_follows_the_warm_up() -> None:
    prior = GaussianPrior()
    ladder = prior.sigmas.numpy()
    steps = 10_000
    sigmas = IsmEstimator(IsmOptions()).schedule(prior, steps, np.random.default_rng(0))
    index = np.searchsorted(ladder, sigmas)
    np.testing.assert_array_equal(ladder[index], sigmas)
    after = index[3000:]  # warm-up over (30% of the run): t in [20, 500)
    assert after.min() == 20 and after.max() == 499
    early = index[:300]  # the upper end starts at 980 (exclusive)
    assert early.max() > 900 and early.max() < 980 and index.min() >= 20
    # the upper end falls linearly: in each tenth of the warm-up the largest index drops
    tops = [index[i : i + 300].max() for i in range(0, 3000, 300)]
    assert all(b <= a + 5 for a, b in zip(tops, tops[1:])) and tops[-1] < 560


def test_paas_schedule_is_the_old_one() -> None:
    prior = GaussianPrior()
    for options in (PaasConfig(), PaasConfig(schedule="annealed", sigma_min=0.05)):
        got = PaasEstimator(options).schedule(prior, 300, np.random.default_rng([5, 1]))
        low, high = default_sigma_range(prior)
        expected = sigma_schedule(
            options.schedule, prior.sigmas, 300, np.random.default_rng([5, 1]),
            sigma_min=options.sigma_min if options.sigma_min is not None else low,
            sigma_max=options.sigma_max if options.sigma_max is not None else high,
        )
        np.testing.assert_array_equal(got, expected)


# -- through the engine ----------------------------------------------------------------------

ESTIMATOR_TABLES = {
    "paas": '[estimator]\nname = "paas"\nn_noise = 2\n',
    "sds": '[estimator]\nname = "sds"\nn_noise = 2\nweighting = "uniform"\n',
    # upper levels: at the low half of the empirical prior's ladder both ends of the interval
    # often denoise to the same training image (these 16x16 images: always), and ISM's
    # gradient is then exactly 0
    "ism": '[estimator]\nname = "ism"\ninversion_steps = 2\nt_range = [0.8, 0.98]\n',
}


class LegacyPaas:
    """The engine's step before estimators were plugins: paas_gradient with the [paas] settings."""

    def __init__(self, paas: PaasConfig) -> None:
        self.paas = paas

    def gradient(self, prior, y, sigma, progress, cond, generator):  # type: ignore[no-untyped-def]
        return paas_gradient(prior, y, sigma, cond, n_noise=self.paas.n_noise, var_red=self.paas.var_red, generator=generator)


def train(recipe, steps: int, legacy: bool = False):  # type: ignore[no-untyped-def]
    parts = engine.build_components(recipe, torch.device("cpu"))
    trainer = engine.Trainer.create(recipe, parts)
    if legacy:  # the old Trainer.create's schedule and the old step's gradient
        paas = recipe.settings.paas
        low, high = default_sigma_range(parts.prior)
        trainer.sigmas = sigma_schedule(
            paas.schedule, parts.prior.sigmas, recipe.settings.steps, np.random.default_rng([recipe.settings.seed, 1]),
            sigma_min=paas.sigma_min if paas.sigma_min is not None else low,
            sigma_max=paas.sigma_max if paas.sigma_max is not None else high,
        )
        trainer.estimator = LegacyPaas(paas)
    results = [trainer.train_step() for _ in range(steps)]
    engine.Trainer.fetch(results)
    return trainer, results


@pytest.mark.parametrize(
    "table",
    ["", '[paas]\nschedule = "annealed"\nvar_red = false\nn_noise = 2\n', '[paas]\nsigma_min = 0.5\nsigma_max = 5.0\n'],
)
def test_paas_through_the_plugin_kind_is_the_old_code_path_bit_for_bit(tmp_path, table: str) -> None:
    path = write_recipe(tmp_path, empirical_prior(tmp_path), FIELDS["voxel"])
    path.write_text(path.read_text() + table)
    recipe = load_recipe(path, load_registry())
    assert recipe.estimator.info.name == "paas"
    new, new_results = train(recipe, 6)
    old, old_results = train(recipe, 6, legacy=True)
    np.testing.assert_array_equal(new.sigmas, old.sigmas)
    assert [r.terms for r in new_results] == [r.terms for r in old_results]
    new_state, old_state = new.parts.field.state_dict(), old.parts.field.state_dict()
    assert all(torch.equal(new_state[k], old_state[k]) for k in old_state)
    # [estimator] name = "paas" with the same options is the same run
    if table:
        path.write_text(path.read_text().replace("[paas]", '[estimator]\nname = "paas"'))
        spelled, _ = train(load_recipe(path, load_registry()), 6)
        assert all(torch.equal(spelled.parts.field.state_dict()[k], old_state[k]) for k in old_state)


@pytest.mark.parametrize("name", sorted(ESTIMATOR_TABLES))
def test_resume_continues_every_estimators_schedule(tmp_path, name: str) -> None:
    """Save after 3 steps, rebuild, restore, 3 more: the same field as 6 straight steps."""
    path = write_recipe(tmp_path, empirical_prior(tmp_path), FIELDS["voxel"])
    path.write_text(path.read_text() + ESTIMATOR_TABLES[name])
    recipe = load_recipe(path, load_registry(), overrides=["steps=6"])
    straight, results = train(recipe, 6)
    assert all(set(r.terms) == {"emptiness", "center-depth", name} for r in results)
    folder = RunFolder(tmp_path / "run")
    first, _ = train(recipe, 3)
    _save(first, folder)
    parts = engine.build_components(recipe, torch.device("cpu"))
    resumed = engine.Trainer.create(recipe, parts)
    _restore(resumed, folder)
    assert resumed.step == 3
    np.testing.assert_array_equal(resumed.sigmas, straight.sigmas)
    rest = [resumed.train_step() for _ in range(3)]
    engine.Trainer.fetch(rest)
    assert [r.terms for r in rest] == [r.terms for r in results[3:]]
    a, b = straight.parts.field.state_dict(), resumed.parts.field.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "name, prior",
    [("sds", "empirical"), ("ism", "empirical"), ("sds", "stable-diffusion"), ("ism", "stable-diffusion")],
)
def test_estimator_steps_make_no_host_round_trip(tmp_path, device_path, name: str, prior: str) -> None:  # noqa: F811
    prior_table = empirical_prior(tmp_path) if prior == "empirical" else sd_prior(tmp_path)
    path = write_recipe(tmp_path, prior_table, FIELDS["voxel"])
    path.write_text(path.read_text() + ESTIMATOR_TABLES[name])
    recipe = load_recipe(path, load_registry())
    parts = engine.build_components(recipe, torch.device("cpu"))
    trainer = engine.Trainer.create(recipe, parts)
    with forbid_host_sync(allow=HOST_INPUT_HELPERS) as violations:
        results = [trainer.train_step() for _ in range(3)]
    assert violations == []
    engine.Trainer.fetch(results)
    assert all(math.isfinite(v) for r in results for v in r.terms.values())
    assert results[-1].terms[name] > 0


@pytest.mark.parametrize("name", ["paas", "sds", "ism"])
def test_denoised_target_is_the_priors_prediction(name: str) -> None:
    """What the viewer shows beside the training view: for a prior whose D is a constant
    picture c, every estimator's denoised target is c, whatever the noise; nothing before
    the first step."""

    class ConstantPrior(GaussianPrior):
        def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:  # type: ignore[no-untyped-def]
            return torch.full_like(x, 0.25)

    estimator = {
        "paas": lambda: PaasEstimator(PaasConfig(n_noise=3)),
        "sds": lambda: SdsEstimator(SdsOptions(n_noise=2)),
        "ism": lambda: IsmEstimator(IsmOptions()),
    }[name]()
    prior = ConstantPrior()
    assert estimator.denoised_target() is None
    y = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    estimator.gradient(prior, y, 2.0, 0.5, None, torch.Generator().manual_seed(1))
    target = estimator.denoised_target()
    assert target.shape == y.shape
    torch.testing.assert_close(target, torch.full_like(y, 0.25), rtol=0, atol=1e-5)
