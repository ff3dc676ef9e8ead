"""The stable-diffusion prior on tiny SD folders loaded through the real from_pretrained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from sjc_core.contracts import BuildContext, View
from sjc_core.errors import SjcError
from sjc_core.plugins import load_registry

try:
    from tiny_models import SD_LATENT_SIZE, build_sd_folder, make_clip_tokenizer
except ImportError:  # tests/ imported as a package
    from tests.tiny_models import SD_LATENT_SIZE, build_sd_folder, make_clip_tokenizer

PROMPT = "a delicious burger"


@pytest.fixture(scope="module")
def eps_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sd_folder(tmp_path_factory.mktemp("sd") / "tiny-sd-eps", "epsilon")


@pytest.fixture(scope="module")
def v_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sd_folder(tmp_path_factory.mktemp("sd") / "tiny-sd-v", "v_prediction", seed=1)


@pytest.fixture(scope="module")
def registry():
    return load_registry(warn=lambda message: None)


def build(registry, ctx: BuildContext | None = None, **options):
    info = registry.get("priors", "stable-diffusion")
    return info.factory(info.options(**{"prompt": PROMPT, **options}), ctx or BuildContext())


@pytest.fixture(scope="module")
def eps_prior(registry, eps_folder: Path):
    return build(registry, model=str(eps_folder), guidance_scale=7.5)


@pytest.fixture(scope="module")
def v_prior(registry, v_folder: Path):
    return build(registry, model=str(v_folder), guidance_scale=3.0)


def direct_text(prior, text: str) -> torch.Tensor:
    """CLIP embedding computed here, with the folder's tokenizer and text encoder."""
    ids = prior.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return prior.text_encoder(ids).last_hidden_state


def reference_ladder() -> np.ndarray:
    """The reference's SD ladder: scaled-linear betas 0.00085..0.012, 1000 steps, ascending."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1 - betas)
    return np.sqrt((1 - abar) / abar)


def test_loads_through_the_registry(eps_prior, v_prior) -> None:
    for prior in (eps_prior, v_prior):
        assert prior.channels == 4 and prior.resolution == SD_LATENT_SIZE and prior.value_range is None
        assert prior.sigmas.shape == (1000,) and bool((prior.sigmas[1:] > prior.sigmas[:-1]).all())
        assert prior.unet.dtype == torch.float32  # dtype auto on CPU
    assert eps_prior.prediction_type == "epsilon" and v_prior.prediction_type == "v_prediction"


def test_ladder_is_the_schedulers_own_table(eps_folder: Path, v_folder: Path, eps_prior, v_prior) -> None:
    from diffusers import DDIMScheduler, PNDMScheduler

    for cls, folder, prior in ((PNDMScheduler, eps_folder, eps_prior), (DDIMScheduler, v_folder, v_prior)):
        abar = cls.from_pretrained(folder, subfolder="scheduler").alphas_cumprod.double()
        expected = torch.sqrt((1 - abar) / abar)
        torch.testing.assert_close(prior.ladder.sigmas, expected, rtol=1e-12, atol=0)
        torch.testing.assert_close(prior.sigmas, expected.float())
    # ... which for SD's config is the reference's ladder (sigma 0.0292 .. 14.6).
    np.testing.assert_allclose(eps_prior.ladder.sigmas.numpy(), reference_ladder(), rtol=1e-4)  # diffusers: float32 table
    assert abs(float(eps_prior.sigmas[0]) - 0.0292) < 1e-4 and abs(float(eps_prior.sigmas[-1]) - 14.6146) < 1e-3


def test_tokenizer_is_real_clip(eps_prior) -> None:
    ids = eps_prior.tokenizer("a photo of a burger").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 6548, 49407]
    assert eps_prior.tokenizer.model_max_length == 77


def test_condition_prompts_and_cache(registry, eps_folder: Path, eps_prior) -> None:
    front = eps_prior.condition(View(label="front"))
    assert front.prompt == f"front view of {PROMPT}"
    assert eps_prior.condition(View(label="back")).prompt == f"backside view of {PROMPT}"
    assert eps_prior.condition(View(label="overhead")).prompt == f"overhead view of {PROMPT}"
    assert eps_prior.condition(None).prompt == PROMPT
    assert eps_prior.condition(View(label="front")) is front  # cached per label
    torch.testing.assert_close(front.embedding, direct_text(eps_prior, f"front view of {PROMPT}"))
    torch.testing.assert_close(front.uncond, direct_text(eps_prior, ""))
    assert not torch.allclose(front.embedding, eps_prior.condition(View(label="side")).embedding)

    plain = build(registry, model=str(eps_folder), view_prompts=False, guidance_scale=1.0, negative_prompt="blurry")
    assert plain.condition(View(label="front")).prompt == PROMPT
    assert plain.condition(View(label="front")).uncond is None  # no guidance: no second branch


def test_eps_denoiser_matches_direct_guided_computation(eps_prior) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, SD_LATENT_SIZE, SD_LATENT_SIZE) * 2
    sigma = 1.2345  # between ladder ticks: the prior must snap it
    cond = eps_prior.condition(View(label="side"))
    got = eps_prior.denoise(x, torch.tensor(sigma), cond)

    ladder = reference_ladder()
    t = int(np.abs(ladder - sigma).argmin())
    snapped = float(ladder[t])
    assert abs(snapped - sigma) > 1e-4
    unet = eps_prior.unet
    x_in = x / np.sqrt(1 + snapped**2)
    with torch.no_grad():
        eps_c = unet(x_in, t, encoder_hidden_states=direct_text(eps_prior, f"side view of {PROMPT}").expand(3, -1, -1)).sample
        eps_u = unet(x_in, t, encoder_hidden_states=direct_text(eps_prior, "").expand(3, -1, -1)).sample
    expected = x - snapped * (eps_u + 7.5 * (eps_c - eps_u))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # Guidance matters, and any sigma that snaps to the same tick gives the same D.
    assert (expected - (x - snapped * eps_c)).abs().max() > 1e-2
    torch.testing.assert_close(eps_prior.denoise(x, snapped, cond), got)
    assert not torch.allclose(eps_prior.denoise(x, float(ladder[t + 5]), cond), got)


def test_per_sample_sigmas_and_reference_shapes(eps_prior) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 4, SD_LATENT_SIZE, SD_LATENT_SIZE)
    cond = eps_prior.condition(View(label="front"))
    sigmas = torch.tensor([0.3, 6.0])
    together = eps_prior.denoise(x, sigmas.view(2, 1, 1, 1), cond)
    for i in range(2):
        alone = eps_prior.denoise(x[i : i + 1], float(sigmas[i]), cond)
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-3, atol=1e-3)


def test_v_prediction_is_converted_to_eps(v_prior, v_folder: Path) -> None:
    from diffusers import DDIMScheduler

    abar_table = DDIMScheduler.from_pretrained(v_folder, subfolder="scheduler").alphas_cumprod.double()
    torch.manual_seed(2)
    x = torch.randn(2, 4, SD_LATENT_SIZE, SD_LATENT_SIZE)
    sigma = 3.0
    got = v_prior.denoise(x, sigma, v_prior.condition(None))

    ladder = torch.sqrt((1 - abar_table) / abar_table)
    t = int((ladder - sigma).abs().argmin())
    abar = float(abar_table[t])
    x_t = x * abar**0.5  # = x / sqrt(1 + sigma_t^2): the VP sample
    with torch.no_grad():
        v_c = v_prior.unet(x_t, t, encoder_hidden_states=direct_text(v_prior, PROMPT).expand(2, -1, -1)).sample
        v_u = v_prior.unet(x_t, t, encoder_hidden_states=direct_text(v_prior, "").expand(2, -1, -1)).sample
    v = v_u + 3.0 * (v_c - v_u)
    eps = abar**0.5 * v + (1 - abar) ** 0.5 * x_t
    expected = x - float(ladder[t]) * eps
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # Reading v as if it were eps would be a different (wrong) denoiser.
    assert (expected - (x - float(ladder[t]) * v)).abs().max() > 1e-2


def test_to_rgb_decodes_with_the_scaling_factor(eps_prior) -> None:
    torch.manual_seed(3)
    latents = torch.randn(5, 4, SD_LATENT_SIZE, SD_LATENT_SIZE)  # more than one decode chunk
    rgb = eps_prior.to_rgb(latents)
    assert rgb.shape == (5, 3, SD_LATENT_SIZE * 2, SD_LATENT_SIZE * 2)
    assert float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0
    vae = eps_prior.vae
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    with torch.no_grad():
        expected = ((vae.decode(latents / 0.18215).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(rgb, expected, rtol=1e-4, atol=1e-5)


def test_relative_folder_resolves_against_the_recipe_folder(registry, eps_folder: Path) -> None:
    prior = build(registry, BuildContext(base_dir=eps_folder.parent), model=eps_folder.name, guidance_scale=1.0)
    assert prior.resolution == SD_LATENT_SIZE


def test_option_errors(registry) -> None:
    info = registry.get("priors", "stable-diffusion")
    with pytest.raises(ValidationError, match="guidance_scale"):
        info.options(prompt=PROMPT, guidance_scale=0.5)
    with pytest.raises(ValidationError, match="prompt"):
        info.options()
    with pytest.raises(ValidationError, match="dtype"):
        info.options(prompt=PROMPT, dtype="float8")


def test_missing_hub_model_fails_fast_with_one_line(registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("SJC_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(SjcError) as caught:
        build(registry)  # the default model id
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message and message.startswith("prior.model:")
    assert "allow_download" in message and "SJC_ALLOW_DOWNLOAD" in message and "local" in message


def test_missing_folder_and_incomplete_folder(registry, eps_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SjcError, match="does not exist"):
        build(registry, model=str(tmp_path / "no-such-model"))
    single_file = tmp_path / "sd-v1-5.safetensors"
    single_file.write_bytes(b"")
    with pytest.raises(SjcError, match="is a file; a diffusers folder is needed"):
        build(registry, model=str(single_file))
    broken = tmp_path / "broken"
    shutil.copytree(eps_folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(SjcError) as caught:
        build(registry, model=str(broken))
    assert len(str(caught.value).splitlines()) == 1 and "VAE" in str(caught.value) and "broken" in str(caught.value)


def test_tokenizer_builder_matches_the_saved_tokenizer(eps_prior) -> None:
    text = "overhead view of a corgi wearing a top hat, 8k"
    assert make_clip_tokenizer()(text).input_ids == eps_prior.tokenizer(text).input_ids


# -- through the CLI -------------------------------------------------------------------------
def fake_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """A Hugging Face cache holding ``folder`` as ``repo_id`` (as a past download would)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return cache


def test_cli_offline_error_is_one_line(run_sjc, tmp_path: Path) -> None:
    code, out, err = run_sjc(
        "sample", "--prior", "stable-diffusion", "--set", "prior.prompt=a burger", "--n", "1", "--steps", "2",
        "--out", str(tmp_path / "samples"),
        env={"HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1", "SJC_ALLOW_DOWNLOAD": None},
    )
    lines = [line for line in err.strip().splitlines() if "warning" not in line]
    assert code == 2 and "Traceback" not in err
    assert len(lines) == 1 and "stable-diffusion-v1-5/stable-diffusion-v1-5" in lines[0]
    assert not (tmp_path / "samples" / "samples.json").exists()


@pytest.mark.slow  # a real `sjc run` subprocess: ~17 s of CPU, mostly imports
def test_cli_run_with_a_cached_hub_id(run_sjc, eps_folder: Path, tmp_path: Path) -> None:
    """`sjc run` on the tiny model as the hub id 'tiny-org/tiny-sd', found in the cache, downloads off."""
    cache = fake_hub_cache(tmp_path / "hub", "tiny-org/tiny-sd", eps_folder)
    recipe = tmp_path / "tiny-sd.toml"
    recipe.write_text(
        f"""
name = "tiny-sd"
steps = 3
output = "{(tmp_path / 'runs').as_posix()}"
device = "cpu"
view_every = 3
checkpoint_every = 3

[prior]
name = "stable-diffusion"
model = "tiny-org/tiny-sd"
prompt = "a burger"
guidance_scale = 100.0

[field]
name = "voxel"
grid_size = 12

[[losses]]
name = "emptiness"

[camera]
test_frames = 2
"""
    )
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "SJC_ALLOW_DOWNLOAD": None}
    code, stdout, err = run_sjc("run", str(recipe), env=env)
    assert code == 0, err
    run_dir = tmp_path / "runs" / "tiny-sd-seed0"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(0.09 < r["sigma"] < 12.3 for r in records)  # SD ladder, timesteps 10..969
    assert (run_dir / "checkpoints" / "last.safetensors").exists()
    from imageio.v3 import imread

    view = imread(next((run_dir / "views").glob("*.png")))
    assert view.ndim == 3 and view.shape[2] == 3  # decoded picture beside the depth map
