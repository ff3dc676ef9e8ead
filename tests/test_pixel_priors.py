"""ffhq / lsun-bedroom / pixel-diffusion on tiny UNet2DModel folders (real from_pretrained)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sjc_core.contracts import BuildContext, View
from sjc_core.errors import SjcError
from sjc_core.plugins import load_registry

try:
    from tiny_models import PIXEL_SIZE, build_ddpm_folder, build_score_sde_folder
except ImportError:  # tests/ imported as a package
    from tests.tiny_models import PIXEL_SIZE, build_ddpm_folder, build_score_sde_folder


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_ddpm_folder(tmp_path_factory.mktemp("pixel") / "tiny-ddpm")


@pytest.fixture(scope="module")
def sde_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_score_sde_folder(tmp_path_factory.mktemp("pixel") / "tiny-ncsnpp")


@pytest.fixture(scope="module")
def registry():
    return load_registry(warn=lambda message: None)


def build(registry, name: str, **options):
    info = registry.get("priors", name)
    return info.factory(info.options(**options), BuildContext())


@pytest.fixture(scope="module")
def bedroom(registry, ddpm_folder: Path):
    return build(registry, "lsun-bedroom", model=str(ddpm_folder))


@pytest.fixture(scope="module")
def ffhq(registry, sde_folder: Path):
    return build(registry, "ffhq", model=str(sde_folder))


def test_attributes(bedroom, ffhq) -> None:
    for prior in (bedroom, ffhq):
        assert prior.channels == 3 and prior.resolution == PIXEL_SIZE and prior.value_range == (-1.0, 1.0)
        assert prior.render_resolution == PIXEL_SIZE  # 64, capped at the tiny model's size
        assert prior.condition(View(label="front")) is None and prior.condition(None) is None
        assert bool((prior.sigmas[1:] > prior.sigmas[:-1]).all())
    assert bedroom.prediction_type == "epsilon" and ffhq.prediction_type == "score"


def test_render_resolution_option(registry, ddpm_folder: Path) -> None:
    prior = build(registry, "pixel-diffusion", model=str(ddpm_folder), render_resolution=16)
    assert prior.render_resolution == 16 and prior.resolution == PIXEL_SIZE


def test_ddpm_ladder_is_the_schedulers_table(bedroom, ddpm_folder: Path) -> None:
    from diffusers import DDPMScheduler

    abar = DDPMScheduler.from_pretrained(ddpm_folder, subfolder="scheduler").alphas_cumprod.double()
    torch.testing.assert_close(bedroom.ladder.sigmas, torch.sqrt((1 - abar) / abar), rtol=1e-12, atol=0)
    assert bedroom.sigmas.shape == (1000,)
    assert float(bedroom.sigmas[0]) == pytest.approx(0.0100, rel=1e-3)  # sqrt(1e-4 / (1 - 1e-4))
    assert float(bedroom.sigmas[-1]) == pytest.approx(157.4, rel=1e-2)


def test_score_sde_ladder_is_the_schedulers_sigmas_in_minus_one_one_units(registry, ffhq, sde_folder: Path) -> None:
    from diffusers import ScoreSdeVeScheduler

    scheduler = ScoreSdeVeScheduler.from_pretrained(sde_folder, subfolder="scheduler")
    scheduler.set_sigmas(scheduler.config.num_train_timesteps)
    own = scheduler.discrete_sigmas.double()
    assert ffhq.sigmas.shape == (2000,)
    # The model's data is [0, 1]; in the prior's [-1, 1] units every noise level doubles.
    torch.testing.assert_close(ffhq.sigmas.double(), 2 * own, rtol=1e-6, atol=0)
    assert float(ffhq.sigmas[0]) == pytest.approx(0.02) and float(ffhq.sigmas[-1]) == pytest.approx(696.0)
    same_units = build(registry, "ffhq", model=str(sde_folder), data_range="[-1,1]")
    torch.testing.assert_close(same_units.sigmas.double(), own, rtol=1e-6, atol=0)


def test_ddpm_denoiser_snaps_and_scales(bedroom) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, PIXEL_SIZE, PIXEL_SIZE) * 2 - 1
    sigma = 0.777
    got = bedroom.denoise(x, torch.tensor(sigma), None)

    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    ladder = np.sqrt((1 - np.cumprod(1 - betas)) / np.cumprod(1 - betas))
    t = int(np.abs(ladder - sigma).argmin())
    snapped = float(ladder[t])
    assert abs(snapped - sigma) > 1e-5
    with torch.no_grad():
        eps = bedroom.unet(x / np.sqrt(1 + snapped**2), t).sample
    torch.testing.assert_close(got, x - snapped * eps, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(bedroom.denoise(x, float(ladder[t + 3]), None), got)


def test_score_model_denoiser_in_zero_one_units(ffhq) -> None:
    torch.manual_seed(1)
    x = torch.rand(2, 3, PIXEL_SIZE, PIXEL_SIZE) * 2 - 1
    sigma = 3.3  # continuous-time model: used as given
    got = ffhq.denoise(x, sigma, None)
    x01, s01 = (x + 1) / 2, sigma / 2
    with torch.no_grad():
        raw = ffhq.unet(x01, torch.full((2,), s01)).sample
    # diffusers' NCSN++ returns the score: it divides its last layer by sigma itself.
    torch.testing.assert_close(got, 2 * (x01 + s01**2 * raw) - 1, rtol=1e-4, atol=1e-3)
    off_ladder = ffhq.denoise(x, sigma * 1.001, None)
    assert not torch.allclose(off_ladder, got)  # no snapping for the continuous VE model


def test_score_reading_agrees_with_diffusers_own_sampler(ffhq, sde_folder: Path) -> None:
    """ScoreSdeVeScheduler.step_pred moves x by (sigma^2 - sigma_prev^2) * output, i.e. reads the
    UNet output as the score; D = x + sigma^2 * score must give the same step."""
    from diffusers import ScoreSdeVeScheduler

    scheduler = ScoreSdeVeScheduler.from_pretrained(sde_folder, subfolder="scheduler")
    scheduler.set_timesteps(10)
    scheduler.set_sigmas(10)
    t = scheduler.timesteps[4]
    k = int(t * (len(scheduler.timesteps) - 1))
    sigma, previous = float(scheduler.discrete_sigmas[k]), float(scheduler.discrete_sigmas[k - 1])
    torch.manual_seed(2)
    x01 = torch.rand(1, 3, PIXEL_SIZE, PIXEL_SIZE) + sigma * torch.randn(1, 3, PIXEL_SIZE, PIXEL_SIZE)
    with torch.no_grad():
        output = ffhq.unet(x01, torch.tensor([sigma])).sample
    step = scheduler.step_pred(output, t, x01, generator=torch.Generator().manual_seed(0)).prev_sample_mean
    denoised01 = (ffhq.denoise(2 * x01 - 1, 2 * sigma, None) + 1) / 2  # the prior works in [-1, 1]
    expected = x01 + (sigma**2 - previous**2) / sigma**2 * (denoised01 - x01)
    torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-3 * sigma)


def test_pixel_diffusion_takes_either_family_and_the_old_flat_layout(registry, ddpm_folder: Path, sde_folder: Path, tmp_path: Path) -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    generic_vp = build(registry, "pixel-diffusion", model=str(ddpm_folder))
    generic_ve = build(registry, "pixel-diffusion", model=str(sde_folder))
    assert generic_vp.prediction_type == "epsilon" and generic_ve.prediction_type == "score"
    # google/ddpm-* repositories keep config.json + scheduler_config.json at the top level.
    flat = tmp_path / "flat"
    UNet2DModel.from_pretrained(ddpm_folder, subfolder="unet").save_pretrained(flat)
    DDPMScheduler.from_pretrained(ddpm_folder, subfolder="scheduler").save_pretrained(flat)
    prior = build(registry, "pixel-diffusion", model=str(flat))
    x = torch.zeros(1, 3, PIXEL_SIZE, PIXEL_SIZE)
    torch.testing.assert_close(prior.denoise(x, 1.0, None), generic_vp.denoise(x, 1.0, None))


def test_v_prediction_pixel_model(registry, ddpm_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "v"
    shutil.copytree(ddpm_folder, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config_path.write_text(json.dumps(config))
    prior = build(registry, "pixel-diffusion", model=str(folder))
    torch.manual_seed(3)
    x = torch.rand(1, 3, PIXEL_SIZE, PIXEL_SIZE) * 2 - 1
    t = 500
    sigma = float(prior.ladder.sigmas[t])
    abar = 1 / (1 + sigma**2)
    with torch.no_grad():
        v = prior.unet(x * abar**0.5, t).sample
    eps = abar**0.5 * v + (1 - abar) ** 0.5 * (x * abar**0.5)
    torch.testing.assert_close(prior.denoise(x, sigma, None), x - sigma * eps, rtol=1e-4, atol=1e-4)


def test_to_rgb(bedroom) -> None:
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    rgb = bedroom.to_rgb(x)
    torch.testing.assert_close(rgb[0, 0, 0], torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_default_models_missing_offline(registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("SJC_ALLOW_DOWNLOAD", raising=False)
    for name, repo in (("ffhq", "google/ncsnpp-ffhq-256"), ("lsun-bedroom", "google/ddpm-ema-bedroom-256")):
        with pytest.raises(SjcError) as caught:
            build(registry, name)
        message = str(caught.value)
        assert len(message.splitlines()) == 1 and repo in message and "allow_download" in message
    with pytest.raises(Exception, match="model"):
        build(registry, "pixel-diffusion")  # no default model


def test_cached_hub_id_loads_offline(registry, ddpm_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id already in the cache loads with downloads off (the real local_files_only path)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--tiny-org--tiny-ddpm"
    commit = "0" * 40
    shutil.copytree(ddpm_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("SJC_ALLOW_DOWNLOAD", raising=False)
    prior = build(registry, "lsun-bedroom", model="tiny-org/tiny-ddpm")
    assert prior.resolution == PIXEL_SIZE
    with pytest.raises(SjcError, match="tiny-org/other"):
        build(registry, "lsun-bedroom", model="tiny-org/other")


# -- through the CLI -------------------------------------------------------------------------
@pytest.mark.slow  # a real `sjc run` subprocess: ~17 s of CPU, mostly imports
@pytest.mark.parametrize("name", ["ffhq", "lsun-bedroom"])
def test_cli_run(run_sjc, name: str, ddpm_folder: Path, sde_folder: Path, tmp_path: Path) -> None:
    folder = sde_folder if name == "ffhq" else ddpm_folder
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        f"""
name = "tiny"
steps = 3
output = "{(tmp_path / 'runs').as_posix()}"
device = "cpu"
view_every = 3
checkpoint_every = 3

[prior]
name = "{name}"
model = "{folder.as_posix()}"
render_resolution = 16

[field]
name = "voxel"
grid_size = 12

[paas]
schedule = "annealed"

[camera]
test_frames = 2
"""
    )
    code, _, err = run_sjc("run", str(recipe))
    assert code == 0, err
    run_dir = tmp_path / "runs" / "tiny-seed0"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3
    sigmas = [r["sigma"] for r in records]
    assert sigmas == sorted(sigmas, reverse=True) and sigmas[0] > sigmas[-1]  # annealed: large to small
    assert list((run_dir / "views").glob("*.png"))
