"""The mvdream prior (issue 26): multi-view UNet, camera embedding, guidance, both weight layouts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sjc_core.contracts import BuildContext, View
from sjc_core.plugins import load_registry
from sjc_core.render.cameras import eye_on_sphere, look_at

try:
    from tiny_models import build_sd_folder
except ImportError:  # tests/ imported as a package
    from tests.tiny_models import build_sd_folder

LDM_PARAMS = {  # MVDream's ldm UNet parameters, shrunk (ashawkey's unet/config.json keys)
    "image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32, "attention_resolutions": [1],
    "num_res_blocks": 1, "channel_mult": [1, 2], "num_head_channels": 8, "transformer_depth": 1, "context_dim": 32,
    "camera_dim": 16,
}


def ldm_keys(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A diffusers UNet state renamed to MVDream's ldm keys (the inverse of the loader's converter)."""
    per, levels = config["layers_per_block"], len(config["block_out_channels"])
    pairs = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
             ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
             ("camera_embed.0.", "class_embedding.linear_1."), ("camera_embed.2.", "class_embedding.linear_2."),
             ("middle_block.0.", "mid_block.resnets.0."), ("middle_block.1.", "mid_block.attentions.0."),
             ("middle_block.2.", "mid_block.resnets.1.")]
    for i in range(levels):
        for j in range(per):
            pairs += [(f"input_blocks.{(per + 1) * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."),
                      (f"input_blocks.{(per + 1) * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}.")]
        for j in range(per + 1):
            pairs += [(f"output_blocks.{(per + 1) * i + j}.0.", f"up_blocks.{i}.resnets.{j}."),
                      (f"output_blocks.{(per + 1) * i + j}.1.", f"up_blocks.{i}.attentions.{j}.")]
        if i < levels - 1:
            crossed = config["up_block_types"][i].startswith("CrossAttn")
            pairs += [(f"input_blocks.{(per + 1) * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."),
                      (f"output_blocks.{(per + 1) * i + per}.{2 if crossed else 1}.", f"up_blocks.{i}.upsamplers.0.")]
    resnet = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
              ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
    out = {}
    for key, value in state.items():
        old, new = max(((o, n) for o, n in pairs if key.startswith(n)), key=lambda p: len(p[1]))
        rest = key[len(new):]
        if ".resnets." in new or new.startswith("mid_block.resnets"):
            for a, b in resnet:
                rest = re.sub(rf"^{a}\.", f"{b}.", rest)
        out[old + rest] = value
    assert len(out) == len(state)
    return out


def tiny_unet(seed: int = 0, params: dict = LDM_PARAMS):
    from sjc_plugins.priors.mvdream_unet import (
        build_multiview_unet,
        unet_config_from_ldm,
    )

    torch.manual_seed(seed)
    config = unet_config_from_ldm(params)
    unet = build_multiview_unet(config)
    with torch.no_grad():  # outputs that depend on everything (conv_out starts at zero in diffusers)
        for name, p in unet.unet.named_parameters():
            if "conv_out" in name or "proj_out" in name or "class_embedding" in name:
                p.copy_(torch.randn(p.shape) * 0.05)
    return unet, config


def build_mvdream_folder(folder: Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """ashawkey's diffusers layout, tiny: SD parts from the tiny SD folder, unet/ in MVDream's ldm keys."""
    from safetensors.torch import save_file

    build_sd_folder(folder, prediction_type=prediction_type, seed=seed)
    unet, config = tiny_unet(seed)
    for item in (folder / "unet").iterdir():
        item.unlink()
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "MultiViewUNetModel", **LDM_PARAMS}))
    state = ldm_keys({k: v.contiguous() for k, v in unet.unet.state_dict().items()}, config)
    save_file(state, str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    return folder


def build_prior(folder: Path, **options):
    registry = load_registry()
    info = registry.get("priors", "mvdream")
    opts = info.options.model_validate({"model": str(folder), "prompt": "a corgi", **options})
    return info.factory(opts, BuildContext(device=torch.device("cpu"), base_dir=folder.parent))


@pytest.fixture(scope="module")
def mvdream_folder(tmp_path_factory) -> Path:
    return build_mvdream_folder(tmp_path_factory.mktemp("mvdream") / "tiny-mvdream")


# ------------------------------------------------------------------ the camera embedding

def mvdream_get_camera(num_frames: int, elevation: float = 15, azimuth_start: float = 0, azimuth_span: float = 360):
    """MVDream's camera_utils.get_camera (blender_coord=True), re-created step by step."""
    cameras = []
    for azimuth in np.arange(azimuth_start, azimuth_span + azimuth_start, azimuth_span / num_frames):
        e, a = np.radians(elevation), np.radians(azimuth)
        position = np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])
        forward = -position / np.linalg.norm(position)
        right = np.cross(forward, np.array([0, 1, 0]))
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        up /= np.linalg.norm(up)
        c2w = np.eye(4)
        c2w[:3, :3] = np.array([right, up, -forward]).T
        c2w[:3, 3] = position
        flip = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
        cameras.append((flip @ c2w).flatten())
    return torch.tensor(np.stack(cameras)).float()


def sjc_pose(elevation: float, azimuth: float, radius: float = 2.5) -> np.ndarray:
    """sjc's camera at an elevation: eye_on_sphere's polar draw v = (1 - cos(90 - e)) * 90 degrees."""
    polar_draw = 90.0 * (1.0 - np.cos(np.radians(90.0 - elevation)))
    return look_at(eye_on_sphere(radius, azimuth, polar_draw))


@pytest.mark.parametrize("elevation", [15.0, 0.0, 30.0])
def test_known_poses_give_mvdreams_own_camera_embedding(elevation: float) -> None:
    from sjc_plugins.priors.mvdream_cameras import camera_embedding

    expected = mvdream_get_camera(4, elevation=elevation)  # azimuths 0, 90, 180, 270
    poses = np.stack([sjc_pose(elevation, a) for a in (0.0, 90.0, 180.0, 270.0)])
    got = camera_embedding(torch.from_numpy(poses)).float()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # sjc's front (azimuth 0) is MVDream's azimuth 0: camera on -y of Blender's world, z up
    assert got[0, 7] < 0 and abs(got[0, 3]) < 1e-6 and got[0, 11] == pytest.approx(np.sin(np.radians(elevation)), abs=1e-6)


# ------------------------------------------------------------------ the multi-view UNet

def test_views_attend_to_each_other_and_one_view_is_the_plain_unet() -> None:
    from diffusers import UNet2DConditionModel

    unet, config = tiny_unet()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([500, 500, 500, 500])
    text = torch.randn(4, 7, 32, generator=g)
    cams = torch.randn(4, 16, generator=g)
    with torch.no_grad():
        out = unet(x, t, text, cams, 4)
        assert out.shape == (4, 4, 8, 8)
        changed = x.clone()
        changed[2] += 1.0
        out2 = unet(changed, t, text, cams, 4)
        for other in (0, 1, 3):  # changing view 2 changes every other view's output
            assert (out2[other] - out[other]).abs().max() > 1e-4
        separate = unet(x, t, text, cams, 1)  # as four one-view objects: no view sees another
        separate2 = unet(changed, t, text, cams, 1)
        torch.testing.assert_close(separate2[0], separate[0], atol=0, rtol=0)
        # N = 1 is a plain UNet2DConditionModel with the same weights and the camera as class label
        plain = UNet2DConditionModel(**config)
        plain.load_state_dict(unet.unet.state_dict())
        torch.testing.assert_close(plain(x, t, text, class_labels=cams).sample, separate, atol=1e-5, rtol=1e-5)
        # ... and, with the camera MLP's output zeroed, the UNet without a camera embedding
        bare = UNet2DConditionModel(**{k: v for k, v in config.items() if "class" not in k})
        bare.load_state_dict({k: v for k, v in unet.unet.state_dict().items() if "class_embedding" not in k})
        unet.unet.class_embedding.linear_2.weight.zero_()
        unet.unet.class_embedding.linear_2.bias.zero_()
        torch.testing.assert_close(unet(x, t, text, cams, 1), bare(x, t, text).sample, atol=1e-5, rtol=1e-5)


def test_camera_mlp_is_added_to_the_time_embedding() -> None:
    """diffusers' projection class embedding is MVDream's camera_embed: Linear, SiLU, Linear, added."""
    unet, _ = tiny_unet()
    inner = unet.unet
    cams = torch.randn(2, 16)
    mlp = inner.class_embedding
    expected = mlp.linear_2(torch.nn.functional.silu(mlp.linear_1(cams)))
    torch.testing.assert_close(mlp(cams), expected)
    t = torch.tensor([10, 10])
    sample = torch.zeros(2, 4, 8, 8)
    emb = inner.get_time_embed(sample, t)
    emb = inner.time_embedding(emb) + inner.get_class_embed(sample, cams)
    torch.testing.assert_close(emb, inner.time_embedding(inner.get_time_embed(sample, t)) + expected)


# ------------------------------------------------------------------ the prior

def test_diffusers_layout_loads_the_ldm_keyed_unet_exactly(mvdream_folder: Path) -> None:
    prior = build_prior(mvdream_folder)
    unet, _ = tiny_unet(0)
    loaded = prior.unet.unet.state_dict()
    assert set(loaded) == set(unet.unet.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in unet.unet.state_dict().items())
    assert prior.views_per_step == 4 and prior.channels == 4 and prior.resolution == 8
    assert prior.guidance_scale == 50.0 and prior.prediction_type == "epsilon"


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_denoise_is_mvdreams_guided_formula(mvdream_folder: Path, tmp_path: Path, prediction: str) -> None:
    """Against a line-for-line MVDream step: cfg = uncond + s (cond - uncond) over [uncond views, cond views],
    camera per view, x_t = sqrt(a) x0 + sqrt(1 - a) eps, x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) (MVDream, eps);
    a v model's x0 = sqrt(a) x_t - sqrt(1 - a) v (diffusers' DDIM); D in VE terms is that x0."""
    if prediction != "epsilon":
        mvdream_folder = build_mvdream_folder(tmp_path / "v-mvdream", prediction_type=prediction)
    prior = build_prior(mvdream_folder, guidance_scale=7.5)
    assert prior.prediction_type == prediction
    views = [View(c2w=torch.from_numpy(sjc_pose(15.0, a))) for a in (0.0, 90.0, 180.0, 270.0)]
    cond = prior.condition_views(views)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)  # VE sample
    index = 400
    sigma = prior.ladder.sigmas[index]
    got = prior.denoise(x, torch.tensor(float(sigma), dtype=torch.float64), cond)

    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_pretrained(str(mvdream_folder), subfolder="scheduler")
    alpha_bar = scheduler.alphas_cumprod[index].double()
    latents = (x * alpha_bar.sqrt()).float()  # the VP sample of the same noise level
    camera = mvdream_get_camera(4, elevation=15.0)
    text = prior._text.embedding.expand(4, -1, -1)
    negative = prior._text.uncond.expand(4, -1, -1)
    with torch.no_grad():
        prior.unet.views.num_views = 4  # MVDream's num_frames
        noise_pred = prior.unet.unet(
            torch.cat([latents] * 2), torch.tensor([index] * 8), encoder_hidden_states=torch.cat([negative, text]),
            class_labels=torch.cat([camera] * 2),
        ).sample
    uncond, conditional = noise_pred.chunk(2)
    guided = (uncond + 7.5 * (conditional - uncond)).double()
    if prediction == "epsilon":
        x0 = (latents.double() - (1 - alpha_bar).sqrt() * guided) / alpha_bar.sqrt()
    else:
        x0 = alpha_bar.sqrt() * latents.double() - (1 - alpha_bar).sqrt() * guided
    torch.testing.assert_close(got, x0, atol=1e-4, rtol=1e-4)


def test_noise_draws_of_each_view_form_separate_objects(mvdream_folder: Path) -> None:
    """x of N*K images, view-major: draw k of every view is one object; results match K single calls."""
    prior = build_prior(mvdream_folder, guidance_scale=2.0)
    views = [View(c2w=torch.from_numpy(sjc_pose(10.0, a))) for a in (0.0, 90.0, 180.0, 270.0)]
    cond = prior.condition_views(views)
    g = torch.Generator().manual_seed(5)
    draws = torch.randn(2, 4, 4, 8, 8, generator=g)  # [K, N, ...]
    sigma = torch.tensor(2.0)
    together = prior.denoise(draws.transpose(0, 1).reshape(8, 4, 8, 8), sigma, cond).reshape(4, 2, 4, 8, 8)
    for k in range(2):
        alone = prior.denoise(draws[k], sigma, cond)
        torch.testing.assert_close(together[:, k], alone, atol=5e-5, rtol=1e-4)


# ------------------------------------------------------------------ the original single checkpoint

def ldm_vae_keys(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state in the ldm (first_stage_model) key layout."""
    out = {}
    for key, value in state.items():
        new = key
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", new)
        new = new.replace("mid_block.attentions.0.", "mid.attn_1.").replace("conv_norm_out", "norm_out")
        new = new.replace("conv_shortcut", "nin_shortcut")
        for a, b in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")):
            new = new.replace(f"attn_1.{a}", f"attn_1.{b}")
        if "attn_1." in new and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # ldm's attention projections are 1x1 convolutions
        out["first_stage_model." + new] = value
    return out


def open_clip_keys(model) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel in OpenCLIP's (cond_stage_model.model) key layout."""
    state, out, prefix = model.state_dict(), {}, "cond_stage_model.model."
    state = {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v for k, v in state.items()}
    out[prefix + "token_embedding.weight"] = state["text_model.embeddings.token_embedding.weight"]
    out[prefix + "positional_embedding"] = state["text_model.embeddings.position_embedding.weight"]
    out[prefix + "ln_final.weight"] = state["text_model.final_layer_norm.weight"]
    out[prefix + "ln_final.bias"] = state["text_model.final_layer_norm.bias"]
    out[prefix + "text_projection"] = torch.randn(model.config.hidden_size, model.config.hidden_size)
    for i in range(model.config.num_hidden_layers):
        layer, block = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{block}attn.in_proj_{kind}"] = torch.cat([state[f"{layer}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            out[f"{block}attn.out_proj.{kind}"] = state[f"{layer}self_attn.out_proj.{kind}"]
            out[f"{block}ln_1.{kind}"] = state[f"{layer}layer_norm1.{kind}"]
            out[f"{block}ln_2.{kind}"] = state[f"{layer}layer_norm2.{kind}"]
            out[f"{block}mlp.c_fc.{kind}"] = state[f"{layer}mlp.fc1.{kind}"]
            out[f"{block}mlp.c_proj.{kind}"] = state[f"{layer}mlp.fc2.{kind}"]
    return out


def test_original_checkpoint_loads_unet_camera_vae_and_open_clip(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    sd = build_sd_folder(tmp_path / "tiny-sd")  # the tokenizer (prior.model) and a VAE to pack
    params = {**LDM_PARAMS, "model_channels": 64, "num_head_channels": 64, "context_dim": 64, "image_size": 32}
    unet, config = tiny_unet(1, params)
    vae = AutoencoderKL.from_pretrained(str(sd / "vae"))
    torch.manual_seed(2)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=1,
        max_position_embeddings=77, hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    )).eval()
    state = {"model.diffusion_model." + k: v for k, v in ldm_keys(unet.unet.state_dict(), config).items()}
    state.update(ldm_vae_keys(vae.state_dict(), len(vae.config.block_out_channels)))
    state.update(open_clip_keys(clip))
    path = tmp_path / "sd-v2.1-base-4view.pt"
    torch.save({"state_dict": state}, path)

    prior = build_prior(sd, checkpoint=str(path), guidance_scale=3.0)
    loaded = prior.unet.unet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in unet.unet.state_dict().items())
    assert prior.unet.unet.config.attention_head_dim == [1, 2]  # MVDream's 64 channels per head
    assert all(torch.equal(prior.vae.state_dict()[k], v) for k, v in vae.state_dict().items())
    ids = prior.tokenizer(["a corgi, 3d asset"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():  # OpenCLIP's penultimate layer, then ln_final
        hidden = clip(ids, output_hidden_states=True).hidden_states[-2]
        expected = getattr(clip, "text_model", clip).final_layer_norm(hidden)
    torch.testing.assert_close(prior._text.embedding, expected, atol=1e-5, rtol=1e-5)
    x = torch.randn(4, 4, 32, 32)
    views = [View(c2w=torch.from_numpy(sjc_pose(15.0, a))) for a in (0.0, 90.0, 180.0, 270.0)]
    assert torch.isfinite(prior.denoise(x, torch.tensor(1.0), prior.condition_views(views))).all()


def test_bad_checkpoint_and_missing_weights_are_one_line(tmp_path: Path, mvdream_folder: Path) -> None:
    from sjc_core.errors import SjcError

    torch.save({"state_dict": {"model.diffusion_model.nothing": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(SjcError, match="not an MVDream checkpoint"):
        build_prior(mvdream_folder, checkpoint=str(tmp_path / "bad.pt"))
    with pytest.raises(SjcError, match="does not exist"):
        build_prior(mvdream_folder, checkpoint=str(tmp_path / "none.pt"))
    registry = load_registry()
    info = registry.get("priors", "mvdream")
    opts = info.options.model_validate({"prompt": "a corgi"})  # the default hub id, downloads off
    with pytest.raises(SjcError, match="hub downloads are off") as caught:
        info.factory(opts, BuildContext(device=torch.device("cpu"), base_dir=tmp_path))
    assert "\n" not in str(caught.value)


def test_validate_checks_the_checkpoint_file_and_the_tokenizer_source(tmp_path: Path, mvdream_folder: Path) -> None:
    from sjc_core.errors import SjcError

    info = load_registry().get("priors", "mvdream")
    ctx = BuildContext(base_dir=tmp_path)
    missing = info.options.model_validate({"prompt": "a corgi", "checkpoint": "nowhere.pt"})
    with pytest.raises(SjcError, match="prior.checkpoint: file 'nowhere.pt' does not exist"):
        missing.preflight(ctx)
    (tmp_path / "mv.pt").write_bytes(b"")
    local = info.options.model_validate({"prompt": "a corgi", "checkpoint": "mv.pt", "model": str(mvdream_folder)})
    assert local.preflight(ctx) == []
    cached = info.options.model_validate({"prompt": "a corgi", "checkpoint": "mv.pt"})  # SD 2.1 base's tokenizer
    notes = cached.preflight(ctx)
    assert len(notes) == 1 and "stabilityai/stable-diffusion-2-1-base" in notes[0]


def test_turned_views_are_the_samplers_cameras_at_the_turned_azimuths() -> None:
    from sjc_core.render.cameras import TrainView, turned_views, view_label

    first = TrainView(look_at(eye_on_sphere(2.0, 30.0, 70.0)), 40.0, view_label(30.0, 70.0), 30.0, 70.0)
    views = turned_views(first, 4)
    assert views[0] is first and [v.fov_deg for v in views] == [40.0] * 4
    for k, view in enumerate(views):
        azimuth = (30.0 + 90.0 * k) % 360.0
        assert view.azimuth_deg == pytest.approx(azimuth)
        np.testing.assert_allclose(view.c2w, look_at(eye_on_sphere(2.0, azimuth, 70.0)), atol=1e-12)
        assert view.label == view_label(azimuth, 70.0)
    assert [v.label for v in views] == ["front", "side", "back", "side"]


def test_a_unet_saved_by_diffusers_loads_as_is(tmp_path: Path, mvdream_folder: Path) -> None:
    """unet/ as a diffusers UNet2DConditionModel (class_embed_type projection) instead of MVDream's ldm keys."""
    import shutil

    folder = tmp_path / "saved"
    shutil.copytree(mvdream_folder, folder)
    shutil.rmtree(folder / "unet")
    unet, _ = tiny_unet(4)
    unet.unet.save_pretrained(folder / "unet")
    prior = build_prior(folder)
    assert all(torch.equal(prior.unet.unet.state_dict()[k], v) for k, v in unet.unet.state_dict().items())
    assert "MultiViewSelfAttention" in {type(p).__name__ for p in prior.unet.unet.attn_processors.values()}
