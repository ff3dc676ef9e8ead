"""ISM against LucidDreamer's own formulas, SDS against threestudio's, on tiny SD UNets.

The reference side re-creates, in plain torch on the prior's own UNet and text encoder,
what LucidDreamer's ``guidance/sd_utils.py`` (``train_step``, ``add_noise_with_cfg`` with
cfg <= 1) and ``guidance/sd_step.py`` (``ddim_step``, eta 0) compute, and what threestudio's
``compute_grad_sds`` computes: timesteps from diffusers' ``DDIMScheduler`` after
``set_timesteps(1000)``, flipped; ``scheduler.add_noise``; DDIM steps in VP latents; the
weight ``sqrt((1 - a) / a)``; text embeddings [negative, cond] for the guided prediction
and the inverse text for the inversion. Both sides use the same noise tensor (no offset
noise, no flip). LucidDreamer subtracts raw UNet outputs, which are noise predictions only
for epsilon models; for the v model the reference takes the eps its v implies.

The conversion. sjc's ascent direction is ``g = scale (D(x_t; cond) - D(x_s; inv))`` in
VE latents, LucidDreamer's ``grad = w(alpha_t) (eps_guided(x_t) - eps_inv(x_s))`` is what
its loss puts on the latents (descended). ``x_VE = x_VP sqrt(1 + sigma^2)``, so D is the
clean-latent estimate ``x_VE - sigma eps`` in both, and the VE DDIM step gives
``D_t - D_s = sigma_t (eps_s - eps_t)`` with ``sigma_t = w(alpha_t)``: no factor of
sqrt(1 + sigma^2) remains and ``g = -(scale / grad_scale) grad``. For SDS likewise
``g = -grad`` with threestudio's ``grad = (1 - a)(eps_guided - n)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sjc_core.contracts import BuildContext
from sjc_core.errors import SjcError
from sjc_core.plugins import load_registry
from sjc_core.recipes.recipe import validate_recipe
from sjc_core.training.estimation import draw_noise
from sjc_plugins.estimators.ism import IsmEstimator
from sjc_plugins.estimators.ism_options import IsmOptions
from sjc_plugins.estimators.sds import SdsEstimator
from sjc_plugins.estimators.sds_options import SdsOptions

try:
    from tiny_models import SD_LATENT_SIZE, build_sd_folder
except ImportError:  # tests/ imported as a package
    from tests.tiny_models import SD_LATENT_SIZE, build_sd_folder

PROMPT = "a delicious burger"
NEGATIVE = "unrealistic, blurry, low quality"  # as in LucidDreamer's configs
SCALE = 7.5
SEED = 11


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ism_ld")
    return {
        "epsilon": build_sd_folder(root / "eps", "epsilon"),
        "v_prediction": build_sd_folder(root / "v", "v_prediction", seed=1),
    }


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    return load_registry(warn=lambda message: None)


_priors: dict[tuple, object] = {}


def build_prior(registry, folder: Path, **options):  # type: ignore[no-untyped-def]
    info = registry.get("priors", "stable-diffusion")
    values = {"prompt": PROMPT, "model": str(folder), "view_prompts": False, "guidance_scale": SCALE, **options}
    return info.factory(info.options(**values), BuildContext())


def prior_for(registry, folder: Path, **options):  # type: ignore[no-untyped-def]
    """One built prior per (folder, options): the UNet is shared with the reference side."""
    key = (str(folder), tuple(sorted(options.items())))
    if key not in _priors:
        _priors[key] = build_prior(registry, folder, **options)
    return _priors[key]


def widened(registry, folder: Path, **options):  # type: ignore[no-untyped-def]
    """The same prior end to end in float64 (its UNet, embeddings and levels), so that the two
    sides can be compared at float64 round-off; built once per (folder, options)."""
    from sjc_plugins.priors.stable_diffusion import StableDiffusionPrior

    key = ("float64", str(folder), tuple(sorted(options.items())))
    if key not in _priors:
        base = build_prior(registry, folder, **options)  # a private copy: its UNet is widened in place
        prior = StableDiffusionPrior(base.unet.double(), base.vae, base.text_encoder, base.tokenizer, base.ladder,
                                     base.options, steps_offset=base.steps_offset)
        prior.sigmas = prior.ladder.sigmas  # the float64 ticks, for the estimator's levels
        _priors[key] = prior
    return _priors[key]


def embed(prior, text: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """LucidDreamer's get_text_embeds: CLIP's last hidden state, padded to 77 tokens."""
    ids = prior.tokenizer([text], padding="max_length", max_length=prior.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return prior.text_encoder(ids)[0]


def ddim_scheduler(folder: Path):  # type: ignore[no-untyped-def]
    """LucidDreamer's scheduler: DDIM from the folder's config, set to every training step.

    SD's own scheduler configs say clip_sample = false; the tiny folder's PNDM config has no
    such key (DDIM's default is true), so it is given here as the real models give it.
    """
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler", clip_sample=False)
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    assert not scheduler.config.clip_sample and not scheduler.config.thresholding
    return scheduler


class LucidDreamer:
    """LucidDreamer's ISM gradient on a UNet, in VP latents (its formulas, re-written)."""

    def __init__(self, prior, folder: Path, shift_timesteps: bool = True) -> None:  # type: ignore[no-untyped-def]
        self.unet = prior.unet
        self.scheduler = ddim_scheduler(folder)
        flipped = torch.flip(self.scheduler.timesteps, dims=(0,))
        # shift_timesteps=False: a mutant indexing the training timesteps directly (off by one)
        self.timesteps = flipped if shift_timesteps else flipped - flipped[0]
        self.alphas = self.scheduler.alphas_cumprod.to(self.unet.dtype)  # its float32 table, widened with the UNet
        self.kind = self.scheduler.config.prediction_type

    def eps(self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            steps = timestep.reshape(-1).expand(latents.shape[0])
            return self.unet(latents, steps, encoder_hidden_states=text.to(latents.dtype)).sample

    def ddim_step(self, output: torch.Tensor, now: torch.Tensor, sample: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
        """sd_step.ddim_step with eta 0 from timestep ``now`` to ``then`` (inversion: then > now)."""
        a_now, a_then = self.alphas[now], self.alphas[then]
        if self.kind == "epsilon":
            eps = output
            x0 = (sample - (1 - a_now) ** 0.5 * eps) / a_now**0.5
        else:  # v_prediction
            x0 = a_now**0.5 * sample - (1 - a_now) ** 0.5 * output
            eps = a_now**0.5 * output + (1 - a_now) ** 0.5 * sample
        return a_then**0.5 * x0 + (1 - a_then) ** 0.5 * eps

    def as_noise(self, output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The UNet's output as a noise prediction. LucidDreamer subtracts raw outputs, which
        is ISM only for epsilon models (SD 1.x, 2.x base); for a v model the formula's eps is
        sqrt(a) v + sqrt(1 - a) x, as its own ddim_step derives it."""
        if self.kind == "epsilon":
            return output
        a = self.alphas[timestep]
        return a**0.5 * output + (1 - a) ** 0.5 * sample

    def unroll(self, latents, noise, to_ind, from_ind, inverse, delta, steps, noisy=False):  # type: ignore[no-untyped-def]
        """add_noise_with_cfg with cfg <= 1: DDIM-invert from index from_ind toward to_ind with
        the inverse text; returns the last latent and the noise predictions, newest first."""
        current = latents if noisy else self.scheduler.add_noise(latents, noise, self.timesteps[from_ind])
        index, scores = from_ind, []
        for _ in range(steps):
            now = self.timesteps[index]
            prediction = self.eps(self.scheduler.scale_model_input(current, now), now, inverse)
            scores.append(prediction)
            following = min(index + delta, to_ind)
            current = self.ddim_step(prediction, now, current, self.timesteps[following])
            index = following
            if index == to_ind:
                break
        return current, scores[::-1]

    def grad(self, latents, noise, ind_t, warm_up_rate, uncond, cond, inverse, guidance_scale=SCALE,
             delta_t=80, delta_t_start=100, xs_delta_t=200, xs_inv_steps=5):  # type: ignore[no-untyped-def]
        """train_step's ISM branch, grad_scale 1."""
        delta = int(delta_t + warm_up_rate * (delta_t_start - delta_t))
        ind_s = max(ind_t - delta, 0)
        start = max(ind_s - xs_delta_t * xs_inv_steps, 0)
        x_s, scores_xs = self.unroll(latents, noise, ind_s, start, inverse, xs_delta_t, xs_inv_steps)
        x_t, scores_xt = self.unroll(x_s, noise, ind_t, ind_s, inverse, delta, 1, noisy=True)
        target = self.as_noise((scores_xt + scores_xs)[0], self.timesteps[ind_s], x_s)
        t = self.timesteps[ind_t]
        both = self.eps(torch.cat([x_t, x_t]), t.repeat(2), torch.cat([uncond, cond]))
        noise_pred_uncond, noise_pred_text = both.chunk(2)
        pred_noise = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
        pred_noise = self.as_noise(pred_noise, t, x_t)
        w = ((1 - self.alphas[t]) / self.alphas[t]) ** 0.5
        return w * (pred_noise - target)


def latents_and_noise(seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randn(1, 4, SD_LATENT_SIZE, SD_LATENT_SIZE, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return y, draw_noise(y, 1, torch.Generator().manual_seed(seed + 1))[:, 0]  # what sjc's ISM/SDS draw


def sjc_ism(prior, y: torch.Tensor, tick: int, progress: float, seed: int, **options) -> torch.Tensor:  # type: ignore[no-untyped-def]
    estimator = IsmEstimator(IsmOptions(**options))
    sigma = float(estimator.window(prior)[tick])
    return estimator.gradient(prior, y, sigma, progress, prior.condition(None), torch.Generator().manual_seed(seed + 1))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# Largest difference over the largest entry: float32 (the real path) through up to 7 UNet
# calls measures ~2e-5; in float64 ~5e-14. Both mutants below move it by more than 0.05.
ROUND_OFF = {torch.float32: 1e-4, torch.float64: 1e-11}


def ism_pair(prior, folder: Path, negative: str, ind_t: int, progress: float, steps: int, dtype: torch.dtype,
             **options) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """(sjc's g, LucidDreamer's grad) for one draw, inverse_text empty (LucidDreamer's default)."""
    reference = LucidDreamer(prior, folder)
    y, noise = latents_and_noise(SEED, dtype)
    warm = 1.0 - min(progress / 0.3, 1.0)  # IsmOptions' warm-up: 30 % of the run
    grad = reference.grad(y, noise, ind_t, warm, embed(prior, negative), embed(prior, PROMPT), embed(prior, ""),
                          xs_inv_steps=steps)
    tick = int(reference.timesteps[ind_t])
    assert tick == ind_t + 1  # SD's steps_offset = 1: LucidDreamer's lowest level is timestep 1
    return sjc_ism(prior, y, tick, progress, SEED, inversion_steps=steps, **options), grad


@pytest.mark.parametrize(
    "kind, ind_t, progress, steps",
    [
        ("epsilon", 500, 1.0, 5),  # after the warm-up: s = 420, inversion 0 -> 200 -> 400 -> 420
        ("epsilon", 980, 1.0, 5),  # five strides of 200 up to s = 900
        ("epsilon", 500, 0.0, 5),  # start of the warm-up: delta 100, s = 400
        ("epsilon", 700, 1.0, 2),  # two strides: noised at s - 400, not at 0
        ("epsilon", 60, 1.0, 5),  # t below the interval: s = index 0
        ("v_prediction", 500, 1.0, 5),
    ],
)
@pytest.mark.parametrize("negative", ["", NEGATIVE])
def test_ism_is_luciddreamers_gradient(registry, folders, kind: str, ind_t: int, progress: float, steps: int,
                                       negative: str) -> None:  # type: ignore[no-untyped-def]
    """The real path (float32): equal within float32 round-off, and both old differences caught."""
    prior = prior_for(registry, folders[kind], negative_prompt=negative)
    tolerance = ROUND_OFF[torch.float32]
    g, grad = ism_pair(prior, folders[kind], negative, ind_t, progress, steps, torch.float32)
    assert relative(g, -grad) < tolerance, relative(g, -grad)
    torch.testing.assert_close(g, -grad, rtol=0, atol=tolerance * float(grad.abs().max()))

    # What this test tells apart: timesteps indexed without the offset (sjc before) ...
    y, noise = latents_and_noise(SEED)
    warm = 1.0 - min(progress / 0.3, 1.0)
    uncond, cond, inverse = embed(prior, negative), embed(prior, PROMPT), embed(prior, "")
    unshifted = LucidDreamer(prior, folders[kind], shift_timesteps=False)
    assert relative(unshifted.grad(y, noise, ind_t, warm, uncond, cond, inverse, xs_inv_steps=steps), grad) > 0.02
    if negative:  # ... and the inversion with the negative prompt (sjc before; still an option)
        with_negative = LucidDreamer(prior, folders[kind]).grad(y, noise, ind_t, warm, uncond, cond, uncond,
                                                                xs_inv_steps=steps)
        assert relative(with_negative, grad) > 0.01
        old = sjc_ism(prior, y, ind_t + 1, progress, SEED, inversion_steps=steps, inversion_condition="unconditional")
        assert relative(old, -with_negative) < tolerance


@pytest.mark.parametrize(
    "kind, ind_t, progress, steps, negative",
    [("epsilon", 700, 1.0, 2, NEGATIVE), ("epsilon", 60, 1.0, 5, ""), ("v_prediction", 500, 0.0, 5, NEGATIVE)],
)
def test_ism_is_luciddreamers_gradient_to_float64_round_off(registry, folders, kind: str, ind_t: int, progress: float,
                                                           steps: int, negative: str) -> None:  # type: ignore[no-untyped-def]
    """The same prior widened to float64: the formulas agree to ~1e-14, not merely to float32."""
    prior = widened(registry, folders[kind], negative_prompt=negative)
    g, grad = ism_pair(prior, folders[kind], negative, ind_t, progress, steps, torch.float64)
    assert g.dtype == torch.float64 and relative(g, -grad) < ROUND_OFF[torch.float64], relative(g, -grad)


def test_ism_inverts_with_the_inverse_prompt(registry, folders) -> None:  # type: ignore[no-untyped-def]
    prior = prior_for(registry, folders["epsilon"], negative_prompt=NEGATIVE, inverse_prompt="a photo")
    assert prior.inverse_condition().prompt == "a photo" and prior.inverse_condition().uncond is None
    reference = LucidDreamer(prior, folders["epsilon"])
    y, noise = latents_and_noise(SEED + 5)
    grad = reference.grad(y, noise, 300, 0.0, embed(prior, NEGATIVE), embed(prior, PROMPT), embed(prior, "a photo"))
    g = sjc_ism(prior, y, 301, 1.0, SEED + 5)
    assert relative(g, -grad) < ROUND_OFF[torch.float32]
    empty = reference.grad(y, noise, 300, 0.0, embed(prior, NEGATIVE), embed(prior, PROMPT), embed(prior, ""))
    assert relative(empty, grad) > 0.01


def test_ism_schedule_draws_luciddreamers_timesteps(registry, folders) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    prior = prior_for(registry, folders["epsilon"])
    estimator = IsmEstimator(IsmOptions(warmup=0.0))
    window = estimator.window(prior)
    assert prior.steps_offset == 1 and estimator.offset(prior) == 1
    ticks = np.searchsorted(window, estimator.schedule(prior, 20_000, np.random.default_rng(0)))
    # LucidDreamer: index uniform in [int(0.02 N), int(0.5 N)) = [20, 500), timestep = index + 1
    assert ticks.min() == 21 and ticks.max() == 500
    top = IsmEstimator(IsmOptions(warmup=0.0, t_range=(0.9, 1.0), warmup_t_max=1.0))
    drawn = np.searchsorted(window, top.schedule(prior, 5000, np.random.default_rng(0)))
    assert drawn.max() == 999  # index 999 would be timestep 1000: capped to stay on the ladder


def test_steps_offset_follows_diffusers_ddim_timesteps(registry, folders) -> None:  # type: ignore[no-untyped-def]
    from diffusers import DDIMScheduler

    from sjc_plugins.priors.stable_diffusion import ddim_steps_offset

    for spacing in ("leading", "trailing", "linspace"):
        for offset in (0, 1):
            scheduler = DDIMScheduler(steps_offset=offset, timestep_spacing=spacing)
            scheduler.set_timesteps(1000)
            flipped = torch.flip(scheduler.timesteps, dims=(0,))
            assert ddim_steps_offset(scheduler) == int(flipped[0]), (spacing, offset)
            assert torch.equal(flipped, torch.arange(1000) + int(flipped[0]))


# -- guidance conventions --------------------------------------------------------------------


def test_threestudio_convention_at_s_is_sjcs_at_s_plus_one(registry, folders) -> None:  # type: ignore[no-untyped-def]
    sjc = prior_for(registry, folders["epsilon"], guidance_scale=8.5, negative_prompt=NEGATIVE)
    threestudio = prior_for(registry, folders["epsilon"], guidance_convention="threestudio", negative_prompt=NEGATIVE)
    assert threestudio.guidance_scale == 8.5 and sjc.guidance_scale == 8.5
    x = 3 * torch.randn(2, 4, SD_LATENT_SIZE, SD_LATENT_SIZE, generator=torch.Generator().manual_seed(2))
    sigma = float(sjc.sigmas[600])
    got = threestudio.denoise(x, sigma, threestudio.condition(None))
    torch.testing.assert_close(got, sjc.denoise(x, sigma, sjc.condition(None)), rtol=0, atol=0)
    # threestudio's own form: cond + s (cond - uncond), then D = x - sigma eps
    xin = x / (1 + sigma**2) ** 0.5
    t = torch.tensor([600, 600])
    with torch.no_grad():
        text = threestudio.unet(xin, t, encoder_hidden_states=embed(sjc, PROMPT).expand(2, -1, -1)).sample
        uncond = threestudio.unet(xin, t, encoder_hidden_states=embed(sjc, NEGATIVE).expand(2, -1, -1)).sample
    expected = x - sigma * (text + SCALE * (text - uncond))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    # ... which the sjc convention at the same s is not
    plain = prior_for(registry, folders["epsilon"], negative_prompt=NEGATIVE)
    assert relative(plain.denoise(x, sigma, plain.condition(None)), got) > 1e-3
    # threestudio at 1 still guides (sjc at 2): both branches are encoded
    one = prior_for(registry, folders["epsilon"], guidance_scale=1.0, guidance_convention="threestudio")
    assert one.guidance_scale == 2.0 and one.condition(None).uncond is not None


@pytest.mark.parametrize("convention", ["threestudio", "sjc"])
def test_sds_is_threestudios_gradient(registry, folders, convention: str) -> None:  # type: ignore[no-untyped-def]
    """threestudio's compute_grad_sds at timestep t (no offset: it draws training timesteps)."""
    from diffusers import DDPMScheduler

    scale = SCALE if convention == "threestudio" else SCALE + 1.0  # sjc's s + 1 = threestudio's s
    prior = prior_for(registry, folders["epsilon"], guidance_convention=convention, guidance_scale=scale,
                      negative_prompt=NEGATIVE)
    scheduler = DDPMScheduler.from_pretrained(folders["epsilon"], subfolder="scheduler")
    y, noise = latents_and_noise(SEED + 9)
    t = torch.tensor([700])
    noisy = scheduler.add_noise(y, noise, t)
    with torch.no_grad():
        both = prior.unet(torch.cat([noisy, noisy]), t.repeat(2),
                          encoder_hidden_states=torch.cat([embed(prior, PROMPT), embed(prior, NEGATIVE)])).sample
    text, uncond = both.chunk(2)
    eps = text + SCALE * (text - uncond)
    grad = (1 - scheduler.alphas_cumprod[t]) * (eps - noise)
    estimator = SdsEstimator(SdsOptions())
    sigma = float(estimator.window(prior)[700])
    g = estimator.gradient(prior, y, sigma, 0.0, prior.condition(None), torch.Generator().manual_seed(SEED + 10))
    assert relative(g, -grad) < ROUND_OFF[torch.float32], relative(g, -grad)


def test_guidance_options_are_checked_at_their_dotted_path(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    def problems(**prior) -> list[str]:  # type: ignore[no-untyped-def]
        raw = {"steps": 4, "device": "cpu", "field": {"name": "voxel", "grid_size": 8},
               "prior": {"name": "stable-diffusion", "prompt": PROMPT, "model": str(tmp_path), **prior}}
        try:
            validate_recipe(raw, registry, base_dir=tmp_path, source="r.toml")
        except SjcError as exc:
            return exc.problems
        return []

    assert problems(guidance_convention="threestudio", inverse_prompt="a photo") == []
    found = problems(guidance_convention="dreamfusion")
    assert found == ["r.toml: prior.guidance_convention: Input should be 'sjc' or 'threestudio' (got 'dreamfusion')"], found
    found = problems(inverse_prompt="x" * 2001)
    assert len(found) == 1 and found[0].startswith("r.toml: prior.inverse_prompt: "), found
    assert "\n" not in found[0]
    ism = {"steps": 4, "device": "cpu", "field": {"name": "voxel", "grid_size": 8},
           "prior": {"name": "stable-diffusion", "prompt": PROMPT, "model": str(tmp_path)},
           "estimator": {"name": "ism", "inversion_condition": "negative"}}
    with pytest.raises(SjcError) as caught:
        validate_recipe(ism, registry, base_dir=tmp_path, source="r.toml")
    assert caught.value.problems == [
        "r.toml: estimator.inversion_condition: Input should be 'inverse', 'unconditional' or 'view' (got 'negative')"
    ]
