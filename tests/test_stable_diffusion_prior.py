"""The stable-diffusion prior on tiny SD folders loaded through the real from_pretrained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import sjc_plugins.priors.stable_diffusion as sd_module
from sjc_core.contracts import BuildContext, View
from sjc_core.errors import SjcError
from sjc_core.plugins import load_registry
from sjc_plugins.priors._diffusion_common import VpLadder, batch_sigma, ladder_dtype
from sjc_plugins.priors.stable_diffusion import StableDiffusionOptions, assemble_stable_diffusion, plan_placement

try:
    from host_guard import HostSyncError, forbid_host_sync
    from tiny_models import (
        SD_LATENT_SIZE,
        build_ddpm_folder,
        build_score_sde_folder,
        build_sd_folder,
        make_clip_tokenizer,
    )
except ImportError:  # tests/ imported as a package
    from tests.host_guard import HostSyncError, forbid_host_sync
    from tests.tiny_models import (
        SD_LATENT_SIZE,
        build_ddpm_folder,
        build_score_sde_folder,
        build_sd_folder,
        make_clip_tokenizer,
    )

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


def test_unconditional_is_the_negative_prompt_unguided(registry, eps_folder: Path, eps_prior) -> None:
    """unconditional(): one UNet branch on the negative prompt, no guidance (what ISM inverts with under inversion_condition = "unconditional")."""
    empty = eps_prior.unconditional()
    assert empty.prompt == "" and empty.uncond is None and eps_prior.unconditional() is empty
    torch.testing.assert_close(empty.embedding, direct_text(eps_prior, ""))
    torch.manual_seed(1)
    x = torch.randn(2, 4, SD_LATENT_SIZE, SD_LATENT_SIZE)
    t = 400
    snapped = float(reference_ladder()[t])
    with torch.no_grad():
        eps_u = eps_prior.unet(x / np.sqrt(1 + snapped**2), t, encoder_hidden_states=direct_text(eps_prior, "").expand(2, -1, -1)).sample
    torch.testing.assert_close(eps_prior.denoise(x, snapped, empty), x - snapped * eps_u, rtol=1e-4, atol=1e-4)
    blurry = build(registry, model=str(eps_folder), negative_prompt="blurry")
    assert blurry.unconditional().prompt == "blurry"
    torch.testing.assert_close(blurry.unconditional().embedding, direct_text(blurry, "blurry"))


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
    with pytest.raises(SjcError, match="cannot read .*sd-v1-5.safetensors' as safetensors"):
        build(registry, model=str(single_file))  # single files load (tests/test_single_file_sd.py); this one is empty
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SjcError, match="is a file of unknown type; a single-file checkpoint ends in .safetensors or .ckpt"):
        build(registry, model=str(tmp_path / "notes.txt"))
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


def test_downloads_on_but_hub_unreachable_says_so_first(run_sjc, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    """With downloads on and the hub out of reach (a loopback port nobody listens on), the one
    line leads with the unreachable hub, not with a config file the hub library could not get."""
    import socket

    with socket.socket() as probe:  # a free loopback port, closed again: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    env = {"HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": None,
           "SJC_ALLOW_DOWNLOAD": "1"}
    code, _, err = run_sjc("run", repo / "recipes" / "rose.toml", "--run-dir", tmp_path / "run", env=env)
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err
    assert lines == [
        f"error: prior.model: the Hugging Face hub ({endpoint}) could not be reached (Connection refused), and "
        f"'stable-diffusion-v1-5/stable-diffusion-v1-5' is not in the local cache ({tmp_path / 'empty-cache'}); "
        "connect this machine (or set HF_ENDPOINT to a mirror), or point prior.model at a local diffusers folder"
    ]
    assert not (tmp_path / "run").exists()


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


# -- memory and speed options, placement, device-resident denoise -----------------------------
ALL_KEYS = {None, "front", "side", "back", "overhead"}


def load_parts(folder: Path):
    """UNet, VAE, text encoder, tokenizer and scheduler of a tiny SD folder, as from_pretrained gives them."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    return (
        UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
        AutoencoderKL.from_pretrained(folder, subfolder="vae"),
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder"),
        CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        PNDMScheduler.from_pretrained(folder, subfolder="scheduler"),
    )


def recipe_prior(registry, folder: Path, tmp_path: Path, *overrides: str):
    """The prior of a recipe naming the tiny model, with ``--set`` overrides, built through the registry."""
    from sjc_core.recipes.recipe import load_recipe

    recipe = tmp_path / "tiny-sd.toml"
    recipe.write_text(
        f'[prior]\nname = "stable-diffusion"\nmodel = "{folder.name}"\nprompt = "{PROMPT}"\nguidance_scale = 7.5\n'
    )
    choice = load_recipe(recipe, registry, overrides=list(overrides), base_dir=folder.parent).prior
    return choice.info.factory(choice.options, BuildContext(base_dir=folder.parent))


def denoise_probe(prior) -> torch.Tensor:
    torch.manual_seed(4)
    x = torch.randn(2, 4, SD_LATENT_SIZE, SD_LATENT_SIZE) * 2
    return prior.denoise(x, torch.tensor([0.7, 4.0]), prior.condition(View(label="front")))


def decode_probe(prior) -> torch.Tensor:
    torch.manual_seed(5)
    return prior.to_rgb(torch.randn(5, 4, SD_LATENT_SIZE, SD_LATENT_SIZE))


@pytest.mark.parametrize(
    ("override", "atol"),
    [
        ("prior.attention_slicing=true", 1e-4),
        ("prior.attention_slicing=auto", 1e-4),
        ("prior.attention_slicing=max", 1e-4),
        ("prior.attention_slicing=2", 1e-4),
        ("prior.vae_tiling=true", 0.0),
        ("prior.cpu_offload=true", 0.0),
    ],
)
def test_each_option_gives_the_default_denoiser(registry, eps_folder: Path, eps_prior, tmp_path: Path, override, atol):
    """Through the recipe (--set) and the registry. Sliced attention sums in another order: ~1e-6
    at the UNet's output, times guidance 7.5 and sigma 4 in D; the rest is bit-identical on the CPU."""
    prior = recipe_prior(registry, eps_folder, tmp_path, override)
    expected = denoise_probe(eps_prior)
    got = denoise_probe(prior)
    if atol == 0.0:
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected, rtol=atol, atol=atol)
    torch.testing.assert_close(decode_probe(prior), decode_probe(eps_prior), rtol=0, atol=1e-6)

    from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

    processors = list(prior.unet.attn_processors.values())
    slicing = prior.options.attention_slicing
    if slicing is False:
        assert all(isinstance(p, AttnProcessor2_0) for p in processors)
    else:
        want = {True: 4, "auto": 4, "max": 1}.get(slicing, slicing)  # the tiny UNet has 8 heads per layer
        assert all(isinstance(p, SlicedAttnProcessor) and p.slice_size == want for p in processors)
    assert prior.vae.use_tiling == prior.options.vae_tiling


def test_vae_tiling_decodes_large_latents_in_tiles(registry, eps_folder: Path, eps_prior) -> None:
    """Latents larger than a tile (16 for the tiny VAE) take the tiled path; pictures stay close."""
    prior = build(registry, model=str(eps_folder), vae_tiling=True)
    torch.manual_seed(6)
    latents = torch.randn(1, 4, 2 * SD_LATENT_SIZE, 2 * SD_LATENT_SIZE)
    calls = []
    original = prior.vae.tiled_decode
    prior.vae.tiled_decode = lambda *a, **k: calls.append(1) or original(*a, **k)
    tiled = prior.to_rgb(latents)
    assert calls and tiled.shape == (1, 3, 4 * SD_LATENT_SIZE, 4 * SD_LATENT_SIZE)
    whole = eps_prior.to_rgb(latents)
    assert float((tiled - whole).abs().mean()) < 0.05  # blended seams, same picture


def test_compile_wraps_the_unet_and_one_call_matches(registry, eps_folder: Path, eps_prior, monkeypatch) -> None:
    """compile = true through the registry. Inductor needs ~35 s for even the tiny UNet on this CPU,
    so torch.compile is held to its 'eager' backend here: dynamo still traces the real call."""
    import torch._dynamo

    real_compile = torch.compile
    backends = []

    def eager_compile(model=None, **kwargs):
        backends.append(kwargs.get("backend", "inductor"))
        return real_compile(model, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", eager_compile)
    try:
        prior = build(registry, model=str(eps_folder), guidance_scale=7.5, compile=True)
        assert backends == ["inductor"]  # the prior asked for the default backend
        assert prior.unet._compiled_call_impl is not None  # nn.Module.compile: in place, type kept
        assert type(prior.unet).__name__ == "UNet2DConditionModel" and prior.unet.config.in_channels == 4
        torch.testing.assert_close(denoise_probe(prior), denoise_probe(eps_prior), rtol=1e-5, atol=1e-5)
    finally:
        torch._dynamo.reset()


def test_bad_option_values_are_one_line_errors(registry, eps_folder: Path, tmp_path: Path) -> None:
    cases = {
        "prior.attention_slicing=fast": "prior.attention_slicing: expected false, true or 'auto'",
        "prior.attention_slicing=0": "prior.attention_slicing: expected",
        "prior.attention_slicing=-2": "prior.attention_slicing: expected",
        "prior.vae_tiling=maybe": "prior.vae_tiling: Input should be a valid boolean",
        "prior.cpu_offload=2": "prior.cpu_offload: Input should be a valid boolean",
        "prior.compile=fast": "prior.compile: Input should be a valid boolean",
    }
    for override, start in cases.items():
        with pytest.raises(SjcError) as caught:
            recipe_prior(registry, eps_folder, tmp_path, override)
        assert len(caught.value.problems) == 1, caught.value.problems
        assert start in caught.value.problems[0], caught.value.problems
    info = registry.get("priors", "stable-diffusion")
    with pytest.raises(ValidationError) as caught:
        info.options(prompt=PROMPT, attention_slicing=[1, 2])
    assert len(caught.value.errors()) == 1
    # Valid values, as typed in TOML or on the command line.
    valid = ((True, True), ("true", True), ("false", False), ("AUTO", "auto"), ("max", "max"), (3, 3), ("3", 3))
    for value, parsed in valid:
        assert info.options(prompt=PROMPT, attention_slicing=value).attention_slicing == parsed
    # A slice larger than the UNet's attention heads is caught at build, in one line.
    with pytest.raises(SjcError) as caught:
        build(registry, model=str(eps_folder), attention_slicing=16)
    assert len(str(caught.value).splitlines()) == 1 and "at most 8" in str(caught.value)


def test_every_prompt_is_encoded_at_build_and_the_encoder_released(registry, eps_folder: Path) -> None:
    from transformers import CLIPTextModel

    prior = build(registry, model=str(eps_folder), guidance_scale=7.5)
    assert prior.text_encoder_released and set(prior._cache) == ALL_KEYS
    assert prior.placement.text_home == torch.device("cpu") and prior.text_encoder.device == torch.device("cpu")
    # Identical to encoding each prompt on its own with the folder's encoder (today's results).
    fresh = CLIPTextModel.from_pretrained(eps_folder, subfolder="text_encoder").eval()
    with torch.no_grad():
        for key in ALL_KEYS:
            cond = prior._cache[key]
            assert torch.equal(cond.embedding, direct_text_with(fresh, prior, prior.prompt_for(key)))
            assert torch.equal(cond.uncond, direct_text_with(fresh, prior, ""))
            assert cond.embedding.device == prior.device and cond.embedding.dtype == prior.unet.dtype

    # After release the encoder is never needed: every label is served from the cache.
    before = {key: prior._cache[key] for key in ALL_KEYS}

    def refuse(*args, **kwargs):
        raise AssertionError("the text encoder ran after release")

    prior.text_encoder.forward = refuse
    for label in ("front", "side", "back", "overhead"):
        assert prior.condition(View(label=label)) is before[label]
    assert prior.condition(None) is before[None] and prior.condition(View()) is before[None]

    unconditional = prior.unconditional()  # ISM's inversion: encoded at build as well
    assert torch.equal(unconditional.embedding, direct_text_with(fresh, prior, "")) and unconditional.uncond is None

    plain = build(registry, model=str(eps_folder), view_prompts=False, guidance_scale=1.0)
    assert set(plain._cache) == {None} and plain._cache[None].uncond is None
    plain.text_encoder.forward = refuse
    assert plain.condition(View(label="back")).prompt == PROMPT
    assert plain.unconditional().prompt == ""


def direct_text_with(encoder, prior, text: str) -> torch.Tensor:
    ids = prior.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return encoder(ids).last_hidden_state


def test_placement_plan() -> None:
    """Where each part lives, decided without a device (a CUDA plan is checked on any machine)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    options = StableDiffusionOptions(prompt=PROMPT)
    plan = plan_placement(options, "cpu")
    assert (plan.device, plan.text_device, plan.text_home, plan.vae_home, plan.decode_device) == (cpu,) * 5
    assert plan.dtype == plan.text_dtype == torch.float32 and plan.memory_format == torch.contiguous_format

    plan = plan_placement(options, "cuda")
    assert plan.device == cuda and plan.dtype == torch.float16 and plan.memory_format == torch.channels_last
    assert plan.text_device == cuda and plan.text_dtype == torch.float16  # prompts are encoded there...
    assert plan.text_home == cpu  # ... and the encoder rests here
    assert plan.vae_home == cpu and plan.decode_device == cuda  # the VAE visits the GPU for pictures only

    plan = plan_placement(options.model_copy(update={"cpu_offload": True}), "cuda")
    assert plan.device == cuda and plan.dtype == torch.float16  # the UNet alone on the GPU
    assert (plan.text_device, plan.text_home, plan.vae_home, plan.decode_device) == (cpu,) * 4
    assert plan.text_dtype == torch.float32

    assert plan_placement(options.model_copy(update={"cpu_offload": True}), "cpu") == plan_placement(options, "cpu")
    assert plan_placement(options.model_copy(update={"dtype": "bfloat16"}), "cuda").dtype == torch.bfloat16


def test_assembly_follows_the_plan(eps_folder: Path, eps_prior, monkeypatch) -> None:
    """The moves themselves, on the CPU: a plan naming 'cpu:0' as the accelerator (a different
    torch.device that runs on the CPU) and channels_last, through the public assemble function."""
    accelerator = torch.device("cpu", 0)
    real_plan = sd_module.plan_placement

    def plan(options, device):
        base = real_plan(options, device)
        return sd_module.Placement(
            base.device, base.dtype, torch.channels_last, accelerator, base.text_dtype, base.text_home,
            base.vae_home, accelerator,
        )

    monkeypatch.setattr(sd_module, "plan_placement", plan)
    unet, vae, text_encoder, tokenizer, scheduler = load_parts(eps_folder)
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor())  # the classic processor: assembly must pin SDPA
    events: list[str] = []

    def spy(module, name):
        original_to = module.to

        def to(*args, **kwargs):
            device = torch._C._nn._parse_to(*args, **kwargs)[0]
            events.append(f"{name}->{device}")
            return original_to(*args, **kwargs)

        module.to = to

    spy(text_encoder, "text")
    original_forward = text_encoder.forward
    text_encoder.forward = lambda *a, **k: events.append("encode") or original_forward(*a, **k)
    for name in ("encoder", "decoder", "post_quant_conv"):
        spy(getattr(vae, name), name)

    options = StableDiffusionOptions(model=str(eps_folder), prompt=PROMPT, guidance_scale=7.5)
    prior = assemble_stable_diffusion(unet, vae, text_encoder, tokenizer, scheduler, options, "cpu")

    assert isinstance(prior, sd_module.StableDiffusionPrior)
    assert events[0] == "text->cpu:0" and events[-1] == "text->cpu"
    assert events.count("encode") == 6  # 5 prompts + the negative one
    assert all(e == "encode" for e in events[1:-1])
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    for module in (unet, vae, text_encoder):
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    assert vae.dtype == torch.float32
    # channels_last (other convolution kernels: ~1e-6 at the UNet's output, times guidance and
    # sigma in D) and the explicit SDPA processor give the default's denoiser.
    torch.testing.assert_close(denoise_probe(prior), denoise_probe(eps_prior), rtol=1e-4, atol=1e-4)

    # to_rgb: the decoder (never the encoder) visits the accelerator and comes back, errors included.
    events.clear()
    torch.testing.assert_close(decode_probe(prior), decode_probe(eps_prior), rtol=0, atol=1e-6)
    assert events == ["post_quant_conv->cpu:0", "decoder->cpu:0", "post_quant_conv->cpu", "decoder->cpu"]
    events.clear()
    monkeypatch.setattr(vae, "decode", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError, match="out of memory"):
        prior.to_rgb(torch.zeros(1, 4, SD_LATENT_SIZE, SD_LATENT_SIZE))
    assert events[-2:] == ["post_quant_conv->cpu", "decoder->cpu"]


def test_assemble_from_parts_matches_the_registry(eps_folder: Path, eps_prior) -> None:
    unet, vae, text_encoder, tokenizer, scheduler = load_parts(eps_folder)
    options = StableDiffusionOptions(model=str(eps_folder), prompt=PROMPT, guidance_scale=7.5)
    prior = assemble_stable_diffusion(unet, vae, text_encoder, tokenizer, scheduler, options, torch.device("cpu"))
    assert prior.device == torch.device("cpu") and prior.unet.dtype == torch.float32
    assert torch.equal(denoise_probe(prior), denoise_probe(eps_prior))
    wide = load_parts(eps_folder)
    wide[2].config.hidden_size = 48
    with pytest.raises(SjcError, match="does not match the UNet's cross_attention_dim"):
        assemble_stable_diffusion(*wide, options, "cpu")


# -- no host round trip in denoise -------------------------------------------------------------
def test_host_guard_catches_sjc_calls_only() -> None:
    namespace = {"__name__": "sjc_plugins.priors.probe", "torch": torch}
    exec(
        "def probe(t, what):\n"
        "    if what == 'item': return t.item()\n"
        "    if what == 'float': return float(t)\n"
        "    if what == 'int': return int(t)\n"
        "    if what == 'bool': return bool(t)\n"
        "    if what == 'if':\n"
        "        return 1 if t else 0\n"
        "    if what == 'cpu': return t.cpu()\n"
        "    if what == 'numpy': return t.numpy()\n"
        "    if what == 'tolist': return t.tolist()\n"
        "    if what == 'equal': return torch.equal(t, t)\n"
        "    if what == 'swallow':\n"
        "        try:\n"
        "            return t.item()\n"
        "        except Exception:\n"
        "            return None\n"
        "    return (t * 2).to('cpu')\n",  # a no-op move of a CPU tensor is fine
        namespace,
    )
    probe = namespace["probe"]
    t = torch.tensor(1.5)
    for what in ("item", "float", "int", "bool", "if", "cpu", "numpy", "tolist", "equal"):
        with pytest.raises(HostSyncError, match="from sjc_plugins.priors.probe"):
            with forbid_host_sync():
                probe(t, what)
    with forbid_host_sync() as violations:
        assert float(t) == 1.5 and t.item() == 1.5 and bool(t)  # the test itself may read values
        probe(t, "to")  # and so may sjc code that moves nothing
        torch.nn.functional.interpolate(torch.ones(1, 1, 2, 2), scale_factor=2)  # torch internals may too
    assert violations == []
    with pytest.raises(HostSyncError, match="Tensor.item"):
        with forbid_host_sync():
            probe(t, "swallow")  # caught by sjc code, reported on exit
    assert "__bool__" not in torch.Tensor.__dict__ and torch.Tensor.item is torch._C.TensorBase.item  # restored
    assert probe(t, "item") == 1.5


def test_denoise_never_reads_back_to_the_host(eps_prior, v_prior) -> None:
    torch.manual_seed(7)
    x = torch.randn(2, 4, SD_LATENT_SIZE, SD_LATENT_SIZE)
    cond = eps_prior.condition(View(label="side"))
    expected = eps_prior.denoise(x, torch.tensor([0.5, 2.0]), cond)
    with forbid_host_sync() as violations:
        got = eps_prior.denoise(x, torch.tensor([0.5, 2.0]), cond)
        eps_prior.denoise(x, torch.tensor([0.5, 2.0]).view(2, 1, 1, 1), cond)
        eps_prior.denoise(x, torch.tensor(1.0), None)  # cond None: the cached unlabelled prompt
        eps_prior.denoise(x, 1.2345, cond)
        v_prior.denoise(x, torch.tensor(3.0, dtype=torch.float64), v_prior.condition(View(label="back")))
        unguided = build_unguided(v_prior)
        unguided.denoise(x.half().float(), 0.5, unguided.condition(None))
    assert violations == [] and torch.equal(got, expected)


def build_unguided(prior):
    """The same parts without guidance (the single-branch UNet call)."""
    options = prior.options.model_copy(update={"guidance_scale": 1.0})
    clone = sd_module.StableDiffusionPrior(
        prior.unet, prior.vae, prior.text_encoder, prior.tokenizer, prior.ladder, options, placement=prior.placement
    )
    clone.encode_prompts()
    return clone


@pytest.fixture(scope="module")
def pixel_priors(registry, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("pixel")
    ddpm = build_ddpm_folder(folder / "tiny-ddpm")
    sde = build_score_sde_folder(folder / "tiny-ncsnpp")
    make = lambda name, model: registry.get("priors", name).factory(  # noqa: E731
        registry.get("priors", name).options(model=str(model)), BuildContext()
    )
    return make("lsun-bedroom", ddpm), make("ffhq", sde)


def test_pixel_denoise_never_reads_back_to_the_host(pixel_priors) -> None:
    torch.manual_seed(8)
    for prior in pixel_priors:
        x = torch.rand(2, 3, prior.resolution, prior.resolution) * 2 - 1
        expected = prior.denoise(x, torch.tensor([0.3, 5.0]))
        with forbid_host_sync() as violations:
            got = prior.denoise(x, torch.tensor([0.3, 5.0]))
            prior.denoise(x, 0.8)
            prior.denoise(x, torch.tensor(0.8).view(1, 1, 1, 1))
        assert violations == [] and torch.equal(got, expected)


def test_snapping_on_the_device_matches_the_host_reference(eps_prior) -> None:
    """Snap through batch_sigma on the images' device = the former CPU snap (numpy argmin, float64)."""
    ladder: VpLadder = eps_prior.ladder
    table = ladder.sigmas.numpy()
    midpoints = (table[1:] + table[:-1]) / 2
    probes = np.concatenate([table, midpoints, [0.0, 1e-6, 0.5, 1.2345, 14.0, 100.0]])
    expected = np.abs(probes[:, None] - table[None, :]).argmin(axis=1)
    as64 = torch.from_numpy(probes)
    for sigma in (as64, as64.float(), as64.view(-1, 1, 1, 1)):
        flat = batch_sigma(sigma, len(probes), "cpu")
        assert flat.dtype == torch.float64 and flat.shape == (len(probes),)
        index, snapped = ladder.snap(flat)
        reference = expected if sigma.dtype == torch.float64 else np.abs(
            probes.astype(np.float32).astype(np.float64)[:, None] - table[None, :]
        ).argmin(axis=1)
        np.testing.assert_array_equal(index.numpy(), reference)
        np.testing.assert_array_equal(snapped.numpy(), table[reference])
    assert ladder.on("cpu") is ladder.on(torch.device("cpu")) and ladder.on("cpu").dtype == torch.float64
    filled = batch_sigma(2.5, 3, "cpu")
    assert filled.dtype == torch.float64 and filled.tolist() == [2.5] * 3
    assert ladder_dtype("mps") == torch.float32 and ladder_dtype("cuda") == torch.float64
    with pytest.raises(ValueError, match="3 values for a batch of 2"):
        batch_sigma(torch.ones(3), 2)
