"""The zero123 prior on tiny Zero123 folders (diffusers layout, random weights) loaded through
the registry and the real from_pretrained, and `sjc run` of the image-to-3D recipe on one."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sjc_core.contracts import BuildContext, View
from sjc_core.errors import SjcError
from sjc_core.plugins import load_registry
from sjc_core.render.cameras import eye_on_sphere, look_at

try:
    from host_guard import forbid_host_sync
    from tiny_models import (
        ZERO123_CLIP_SIZE,
        ZERO123_EMBED,
        ZERO123_LATENT_SIZE,
        build_zero123_folder,
    )
except ImportError:  # tests/ imported as a package
    from tests.host_guard import forbid_host_sync
    from tests.tiny_models import (
        ZERO123_CLIP_SIZE,
        ZERO123_EMBED,
        ZERO123_LATENT_SIZE,
        build_zero123_folder,
    )

REPO = Path(__file__).resolve().parents[1]
LATENT = ZERO123_LATENT_SIZE


def write_rgba(path: Path, size: int = 48, empty: bool = False) -> Path:
    """A red box with a blue stripe on a transparent background (or nothing at all)."""
    import imageio.v3 as iio

    rgba = np.zeros((size, size, 4), np.uint8)
    if not empty:
        rgba[size // 4 : 3 * size // 4, size // 3 : 2 * size // 3] = (220, 40, 40, 255)
        rgba[size // 2 - 2 : size // 2 + 2, size // 3 : 2 * size // 3] = (30, 30, 200, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, rgba)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zero123")
    return {
        "cc": build_zero123_folder(root / "tiny-zero123", "cc_projection"),
        "clip": build_zero123_folder(root / "tiny-stable-zero123", "clip_camera_projection"),
        "picture": write_rgba(root / "object.png"),
    }


@pytest.fixture(scope="module")
def registry():
    return load_registry(warn=lambda message: None)


def build(registry, models, ctx: BuildContext | None = None, model: str = "cc", **options):
    info = registry.get("priors", "zero123")
    values = {"model": str(models[model]), "image": str(models["picture"]), **options}
    return info.factory(info.options(**values), ctx or BuildContext())


@pytest.fixture(scope="module")
def prior(registry, models):
    return build(registry, models, elevation_deg=10.0, azimuth_deg=30.0, distance=2.0, guidance_scale=3.0)


def view_at(elevation: float, azimuth: float, distance: float) -> View:
    """A camera placed by hand: the [camera] sampler's azimuth (0 = -x, counter-clockwise seen from +y)."""
    e, a = math.radians(elevation), math.radians(azimuth)
    eye = distance * np.array([-math.cos(e) * math.cos(a), math.sin(e), math.cos(e) * math.sin(a)])
    return View(label=None, c2w=torch.as_tensor(look_at(eye)), fov_deg=49.1)


def test_loads_through_the_registry(prior, models) -> None:
    from diffusers import DDIMScheduler

    assert prior.channels == 4 and prior.resolution == LATENT and prior.value_range is None
    assert prior.picture_size == 2 * LATENT and prior.pose_encoding == "zero123"
    abar = DDIMScheduler.from_pretrained(models["cc"], subfolder="scheduler").alphas_cumprod.double()
    torch.testing.assert_close(prior.ladder.sigmas, torch.sqrt((1 - abar) / abar), rtol=1e-12, atol=0)
    assert prior.camera_hint.radius == 2.0 and prior.camera_hint.fov_deg == pytest.approx(49.1)
    assert prior.projection.in_features == ZERO123_EMBED + 4 and prior.projection.out_features == ZERO123_EMBED
    assert prior.image_encoder.device.type == "cpu"  # released after the one encoding


def test_picture_embedding_and_latent_are_the_published_inputs(prior, models) -> None:
    """CLIP image_embeds of the picture on white (bicubic to the encoder's size, CLIP normalisation)
    and the unscaled mode of the VAE posterior, computed here from the folder's own parts."""
    import imageio.v3 as iio
    import torch.nn.functional as F
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionModelWithProjection

    rgba = iio.imread(models["picture"]).astype(np.float32) / 255
    rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    picture = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    picture = F.interpolate(picture, size=(2 * LATENT, 2 * LATENT), mode="bilinear", antialias=True)
    encoder = CLIPVisionModelWithProjection.from_pretrained(models["cc"], subfolder="image_encoder")
    clip_in = F.interpolate(picture, size=(ZERO123_CLIP_SIZE,) * 2, mode="bicubic", align_corners=True)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        embeds = encoder((clip_in - mean) / std).image_embeds
        latent = AutoencoderKL.from_pretrained(models["cc"], subfolder="vae").encode(2 * picture - 1).latent_dist.mode()
    torch.testing.assert_close(prior.image_embedding, embeds.view(1, 1, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prior.image_latent, latent, rtol=1e-5, atol=1e-5)  # no scaling factor


# Relative poses (target elevation, azimuth, distance) against references (elevation, azimuth, distance).
REFERENCES = [(0.0, 0.0, 2.0), (10.0, 30.0, 2.0), (-20.0, 170.0, 1.5), (45.0, 350.0, 3.0)]
TARGETS = [(0.0, 0.0, 2.0), (30.0, 90.0, 2.0), (-10.0, -170.0, 2.5), (60.0, 10.0, 1.8), (5.0, 540.0, 2.0), (0.0, 200.0, 2.0)]


@pytest.mark.parametrize("reference", REFERENCES)
def test_pose_embedding_matches_hand_computed_values(registry, models, prior, reference) -> None:
    """zero123: [d polar, sin d azimuth, cos d azimuth, d radius], polar = 90 - elevation (radians);
    Stable Zero123: the last entry is the input camera's polar angle."""
    ref_e, ref_a, ref_d = reference
    options = prior.options.model_copy(update={"elevation_deg": ref_e, "azimuth_deg": ref_a, "distance": ref_d})
    for encoding in ("zero123", "stable-zero123"):
        clone = prior.__class__(
            prior.unet, prior.vae, prior.image_encoder, prior.projection, prior.ladder,
            options.model_copy(update={"pose_encoding": encoding}), prior.picture, prior.placement,
        )
        for e, a, d in TARGETS:
            expected = [
                math.radians((90 - e) - (90 - ref_e)),
                math.sin(math.radians(a - ref_a)),
                math.cos(math.radians(a - ref_a)),
                d - ref_d if encoding == "zero123" else math.radians(90 - ref_e),
            ]
            got = clone.pose_features(view_at(e, a, d))
            np.testing.assert_allclose(got, expected, atol=1e-9, err_msg=f"{encoding} {reference} -> {(e, a, d)}")
        assert clone.pose_features(None) == pytest.approx(
            [0.0, 0.0, 1.0, 0.0 if encoding == "zero123" else math.radians(90 - ref_e)], abs=1e-9
        )


def test_azimuth_wraps_around(prior) -> None:
    """170 -> -170 is 20 degrees counter-clockwise, 350 -> 10 also 20, and 10 -> 350 is -20."""
    ref = prior.options.model_copy(update={"elevation_deg": 0.0, "distance": 2.0})
    for ref_a, target_a, delta in ((170.0, -170.0, 20.0), (350.0, 10.0, 20.0), (10.0, 350.0, -20.0), (0.0, 720.0, 0.0)):
        clone = prior.__class__(
            prior.unet, prior.vae, prior.image_encoder, prior.projection, prior.ladder,
            ref.model_copy(update={"azimuth_deg": ref_a}), prior.picture, prior.placement,
        )
        got = clone.pose_features(view_at(0.0, target_a, 2.0))
        np.testing.assert_allclose(got[1:3], [math.sin(math.radians(delta)), math.cos(math.radians(delta))], atol=1e-9)


def test_azimuth_follows_the_training_sampler(prior) -> None:
    """The [camera] sampler's azimuth a (eye_on_sphere) is the azimuth zero123 sees: d azimuth = a - a_in."""
    for azimuth in (0.0, 45.0, 135.0, 250.0):
        eye = eye_on_sphere(2.0, azimuth, 90.0)  # polar draw 90 = on the horizon
        got = prior.pose_features(View(c2w=torch.as_tensor(look_at(eye))))
        delta = math.radians(azimuth - 30.0)
        np.testing.assert_allclose(got, [math.radians(10.0), math.sin(delta), math.cos(delta), 0.0], atol=1e-9)


def test_pose_signs_are_physical(prior) -> None:
    """Zero123's data (Blender, z-up): azimuth = atan2(y, x) grows counter-clockwise seen from above,
    i.e. toward the input camera's own right; the polar angle grows downward. Check both on our
    y-up cameras through their poses, not through angles."""
    reference = look_at(prior.reference.eye())
    right, up = reference[:3, 0], reference[:3, 1]
    for d_azimuth, d_elevation in ((10.0, 0.0), (-25.0, 0.0), (0.0, 15.0), (0.0, -15.0)):
        view = view_at(10.0 + d_elevation, 30.0 + d_azimuth, 2.0)
        moved = view.c2w.numpy()[:3, 3] - prior.reference.eye()
        d_polar, sin_azimuth, _, _ = prior.pose_features(view)
        if d_azimuth:
            assert np.sign(sin_azimuth) == np.sign(float(moved @ right)) != 0  # + toward the camera's right
        else:
            assert np.sign(d_polar) == -np.sign(float(moved @ up)) != 0  # + downward


def test_auto_pose_encoding_follows_the_model_name(registry, models) -> None:
    info = registry.get("priors", "zero123")
    assert info.options(image="x.png", model="ashawkey/stable-zero123-diffusers").resolved_pose_encoding() == "stable-zero123"
    assert info.options(image="x.png", model="kxic/zero123-xl").resolved_pose_encoding() == "zero123"
    assert build(registry, models, model="clip").pose_encoding == "stable-zero123"  # folder 'tiny-stable-zero123'


def test_condition_is_the_projected_token_and_cached(prior, models) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(models["cc"] / "cc_projection" / "diffusion_pytorch_model.safetensors"))
    view = view_at(25.0, 100.0, 2.0)
    cond = prior.condition(view)
    pose = torch.tensor(prior.pose_features(view), dtype=torch.float32).view(1, 1, 4)
    token = torch.cat([prior.image_embedding, pose], dim=-1) @ weights["projection.weight"].T + weights["projection.bias"]
    torch.testing.assert_close(cond.embedding, token, rtol=1e-5, atol=1e-6)
    assert cond.latent is prior.image_latent and cond.guided
    assert prior.condition(view_at(25.0, 100.0, 2.0)) is cond  # cached per pose
    assert prior.condition(view_at(25.0, 101.0, 2.0)) is not cond


class Recorder(torch.nn.Module):
    """Wraps the UNet and keeps what it was called with."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet, self.calls = unet, []

    @property
    def config(self):
        return self.unet.config

    def forward(self, sample, timestep, encoder_hidden_states):
        self.calls.append((sample.clone(), timestep.clone(), encoder_hidden_states.clone()))
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)


def test_unconditional_branch_is_zero_token_and_zero_latent(prior, monkeypatch) -> None:
    """One batched UNet call: [uncond, cond]; the unconditional half has a zero cross-attention
    token and zero picture channels (what the published samplers feed), and D follows
    eps = u + s (c - u)."""
    recorder = Recorder(prior.unet)
    monkeypatch.setattr(prior, "unet", recorder)
    torch.manual_seed(3)
    x = torch.randn(2, 4, LATENT, LATENT)
    cond = prior.condition(view_at(20.0, 60.0, 2.0))
    got = prior.denoise(x, torch.tensor([0.8, 3.0]), cond)
    assert len(recorder.calls) == 1
    sample, t, tokens = recorder.calls[0]
    assert sample.shape == (4, 8, LATENT, LATENT) and tokens.shape == (4, 1, ZERO123_EMBED)
    assert torch.count_nonzero(sample[:2, 4:]) == 0 and torch.count_nonzero(tokens[:2]) == 0
    torch.testing.assert_close(sample[2:, 4:], prior.image_latent.expand(2, -1, -1, -1))
    torch.testing.assert_close(tokens[2:], cond.embedding.expand(2, -1, -1))
    torch.testing.assert_close(sample[:2, :4], sample[2:, :4])
    torch.testing.assert_close(t[:2], t[2:])

    # The same D by hand, from two separate UNet calls at the snapped ticks.
    index = (torch.tensor([0.8, 3.0], dtype=torch.float64)[:, None] - prior.ladder.sigmas[None]).abs().argmin(dim=1)
    sigma = prior.ladder.sigmas[index]
    scale = (1 / torch.sqrt(1 + sigma**2)).float().view(-1, 1, 1, 1)
    x_in = x * scale
    with torch.no_grad():
        u = prior.unet.unet(torch.cat([x_in, torch.zeros(2, 4, LATENT, LATENT)], 1), index, encoder_hidden_states=torch.zeros(2, 1, ZERO123_EMBED)).sample
        c = prior.unet.unet(torch.cat([x_in, prior.image_latent.expand(2, -1, -1, -1)], 1), index, encoder_hidden_states=cond.embedding.expand(2, -1, -1)).sample
    eps = u + 3.0 * (c - u)
    torch.testing.assert_close(got, x - sigma.float().view(-1, 1, 1, 1) * eps, rtol=1e-4, atol=1e-4)


def test_no_guidance_is_one_conditional_branch(registry, models, monkeypatch) -> None:
    unguided = build(registry, models, guidance_scale=1.0)
    recorder = Recorder(unguided.unet)
    monkeypatch.setattr(unguided, "unet", recorder)
    cond = unguided.condition(None)
    assert not cond.guided
    unguided.denoise(torch.randn(1, 4, LATENT, LATENT), 1.0, cond)
    sample, _, tokens = recorder.calls[0]
    assert sample.shape[0] == 1 and torch.equal(sample[:, 4:], unguided.image_latent) and torch.equal(tokens, cond.embedding)


def test_denoiser_shapes_snapping_and_determinism(prior) -> None:
    torch.manual_seed(5)
    x = torch.randn(3, 4, LATENT, LATENT)
    cond = prior.condition(view_at(0.0, 90.0, 2.0))
    first = prior.denoise(x, torch.tensor(1.3), cond)
    assert first.shape == x.shape and first.dtype == x.dtype and bool(torch.isfinite(first).all())
    assert torch.equal(prior.denoise(x, torch.tensor(1.3), cond), first)  # deterministic
    tick = prior.ladder.sigmas[400]
    on_tick = prior.denoise(x, tick.float(), cond)
    assert torch.equal(prior.denoise(x, (tick * 1.0005).float(), cond), on_tick)  # snapped to the same tick
    per_sample = prior.denoise(x, torch.tensor([0.5, 1.3, 6.0]), cond)
    torch.testing.assert_close(per_sample[1:2], prior.denoise(x[1:2], torch.tensor(1.3), cond))
    other = prior.denoise(x, torch.tensor(1.3), prior.condition(view_at(0.0, 270.0, 2.0)))
    assert (other - first).abs().max() > 1e-4  # the pose reaches the UNet
    assert prior.to_rgb(first).shape == (3, 3, 2 * LATENT, 2 * LATENT)
    assert prior.encode_rgb(torch.rand(2, 3, 40, 40)).shape == (2, 4, LATENT, LATENT)


def test_denoise_never_reads_back_to_the_host(prior) -> None:
    x = torch.randn(2, 4, LATENT, LATENT)
    view = view_at(15.0, 45.0, 2.0)
    with forbid_host_sync(allow=["sjc_plugins.priors.zero123.view_eye"]) as violations:
        prior.denoise(x, torch.tensor([0.5, 2.0]), prior.condition(view))
        prior.denoise(x, torch.tensor(1.0), None)
    assert violations == []


def test_both_projection_layouts_give_the_same_prior(registry, models, prior) -> None:
    """cc_projection (projection.*) and clip_camera_projection (proj.*) hold the same seeded weights."""
    other = build(registry, models, model="clip", pose_encoding="zero123", elevation_deg=10.0, azimuth_deg=30.0)
    x = torch.randn(1, 4, LATENT, LATENT)
    view = view_at(30.0, -40.0, 2.0)
    torch.testing.assert_close(other.denoise(x, 2.0, other.condition(view)), prior.denoise(x, 2.0, prior.condition(view)))


# -- bad input ---------------------------------------------------------------------------------
def one_line_error(call) -> str:
    with pytest.raises(SjcError) as caught:
        call()
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_bad_pictures_are_one_line(registry, models, tmp_path: Path) -> None:
    missing = one_line_error(lambda: build(registry, models, image=str(tmp_path / "nope.png")))
    assert missing.startswith("prior.image:") and "no such file" in missing
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a picture at all")
    assert "cannot read the picture" in one_line_error(lambda: build(registry, models, image=str(garbage)))
    empty = write_rgba(tmp_path / "empty.png", empty=True)
    assert "no foreground" in one_line_error(lambda: build(registry, models, image=str(empty)))
    import imageio.v3 as iio

    flat = tmp_path / "flat.png"
    iio.imwrite(flat, np.full((32, 32, 3), 128, np.uint8))
    assert "no foreground" in one_line_error(lambda: build(registry, models, image=str(flat)))
    # The preflight (sjc validate) says the same without building anything.
    info = registry.get("priors", "zero123")
    with pytest.raises(SjcError, match="no foreground"):
        info.options(model=str(models["cc"]), image=str(empty)).preflight(BuildContext())


def test_bad_models_are_one_line(registry, models, tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    assert "does not exist" in one_line_error(lambda: build(registry, {**models, "none": tmp_path / "none"}, model="none"))
    broken = tmp_path / "no-projection"
    shutil.copytree(models["cc"], broken)
    shutil.rmtree(broken / "cc_projection")
    message = one_line_error(lambda: build(registry, {**models, "cc": broken}))
    assert "camera projection" in message and "no-projection" in message
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("SJC_ALLOW_DOWNLOAD", raising=False)
    offline = one_line_error(lambda: registry.get("priors", "zero123").factory(
        registry.get("priors", "zero123").options(image=str(models["picture"])), BuildContext()))
    assert offline.startswith("prior.model:") and "ashawkey/zero123-xl-diffusers" in offline and "allow_download" in offline


# -- sjc run of the recipe -------------------------------------------------------------------
@pytest.mark.slow  # a real `sjc run` subprocess on the tiny model: ~20 s of CPU
def test_sjc_run_of_the_image_to_3d_recipe_writes_every_artifact(run_sjc, models, tmp_path: Path) -> None:
    """The shipped recipe as it is (its own picture: RGB on a plain grey backdrop, a path relative
    to the recipe), run from the repository with a relative recipe path, on the tiny model."""
    runs = tmp_path / "runs"
    overrides = [
        f"prior.model={json.dumps(str(models['cc']))}",
        "steps=4", "view_every=2", "checkpoint_every=2", "log_every=1", 'device="cpu"', f"output={json.dumps(str(runs))}",
        "field.grid_size=12", "camera.test_frames=3",
    ]
    code, _, err = run_sjc("run", "recipes/image-to-3d.toml", *[a for o in overrides for a in ("--set", o)], cwd=REPO)
    assert code == 0, err
    run = runs / "image-to-3d-seed0"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4
    for record in records:
        terms = json.dumps(record)
        assert "reference-view" in terms and "emptiness" in terms
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 4
    assert (run / "recipe.toml").read_text().count('name = "zero123"') == 1
    assert sorted(p.name for p in (run / "views").glob("*.png")) == ["step_000002.png", "step_000004.png"]
    assert (run / "checkpoints" / "last.safetensors").stat().st_size > 0
    assert any((run / "final" / name).exists() for name in ("turntable.mp4", "turntable.gif"))
    assert (run / "final" / "turntable_strip.png").exists() and (run / "final" / "last_view.png").exists()


def test_sjc_bad_picture_is_one_line_exit_2(run_sjc, models, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    code, _, err = run_sjc(
        "run", REPO / "recipes" / "image-to-3d.toml", "--set", f"prior.model={json.dumps(str(models['cc']))}",
        "--set", f"prior.image={json.dumps(str(tmp_path / 'missing.png'))}", "--set", f"output={json.dumps(str(runs))}",
    )
    lines = [line for line in err.strip().splitlines() if "warning" not in line.lower()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1 and "missing.png" in lines[0] and "prior.image" in lines[0]
    assert not runs.exists()
    empty = write_rgba(tmp_path / "empty.png", empty=True)
    code, _, err = run_sjc("validate", REPO / "recipes" / "image-to-3d.toml", "--set", f"prior.image={json.dumps(str(empty))}")
    assert code == 2 and "no foreground" in err and "Traceback" not in err
