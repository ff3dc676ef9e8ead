"""Single-file (CompVis/ldm layout) Stable Diffusion checkpoints: tiny SD 1.x and 2.x models
written under the exact ldm key names load offline through the prior and denoise exactly as
the same weights loaded from a diffusers folder; unsafe or unknown files are one line."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pytest
import torch

from sjc_core.contracts import BuildContext, View
from sjc_core.errors import SjcError
from sjc_core.plugins import load_registry
from sjc_plugins.priors.ldm_checkpoint import detect_kind, read_checkpoint

try:
    from ldm_files import build_tiny_sd, write_folder, write_single_file
except ImportError:  # tests/ imported as a package
    from tests.ldm_files import build_tiny_sd, write_folder, write_single_file

PROMPT = "a delicious burger"


@pytest.fixture(scope="module")
def registry():
    return load_registry(warn=lambda message: None)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """v1 as .safetensors, v2 as .safetensors (read as v) and as a 2-base .ckpt (global_step 875000),
    each beside a diffusers folder of the same weights."""
    root = tmp_path_factory.mktemp("single-file")
    v1, v2 = build_tiny_sd("v1", seed=0), build_tiny_sd("v2", seed=3)
    return {
        "v1": write_single_file(v1, root / "tiny-v1.safetensors"),
        "v1-folder": write_folder(v1, root / "tiny-v1", "epsilon"),
        "v2": write_single_file(v2, root / "tiny-v2.safetensors"),
        "v2-folder": write_folder(v2, root / "tiny-v2", "v_prediction"),
        "v2-base": write_single_file(v2, root / "tiny-v2-base.ckpt", {"global_step": 875000, "epoch": 3}),
        "v2-base-folder": write_folder(v2, root / "tiny-v2-base", "epsilon"),
    }


def build(registry, **options):
    info = registry.get("priors", "stable-diffusion")
    return info.factory(info.options(**{"prompt": PROMPT, "guidance_scale": 7.5, **options}), BuildContext())


def denoised(prior, seed: int = 0) -> torch.Tensor:
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2.0
    sigma = torch.tensor([0.7, 4.0])
    return prior.denoise(x, sigma, prior.condition(View(label="front")))


@pytest.mark.parametrize("name, prediction", [("v1", "epsilon"), ("v2", "v_prediction"), ("v2-base", "epsilon")])
def test_single_file_denoises_as_the_diffusers_folder(registry, files, name, prediction, capfd) -> None:
    single = build(registry, model=str(files[name]))
    note = capfd.readouterr().err
    folder = build(registry, model=str(files[f"{name}-folder"]))
    assert single.prediction_type == folder.prediction_type == prediction
    assert single.channels == folder.channels == 4
    assert torch.equal(single.sigmas, folder.sigmas)
    assert single.steps_offset == folder.steps_offset == 1
    expected = denoised(folder)
    got = denoised(single)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got - expected).abs().max()
    assert (got - expected).abs().max() < 1e-3 * expected.abs().max()
    # the text path too: the same tokens (v2 pads with "!" = 0) and the same embeddings
    assert torch.equal(single.condition(None).embedding, folder.condition(None).embedding)
    version = name.split("-")[0]
    assert f"prior.model '{files[name].name}': Stable Diffusion {version}" in note and prediction in note


def test_detected_sizes_follow_the_documented_rule(registry, files) -> None:
    """v1 and 2-base: 64 latents (512 px through SD's 8x VAE, here the tiny 2x one); v2 v-prediction: 96."""
    assert build(registry, model=str(files["v1"])).resolution == 64
    assert build(registry, model=str(files["v2"])).resolution == 96
    assert build(registry, model=str(files["v2-base"])).resolution == 64


def test_prediction_override_beats_the_rule(registry, files) -> None:
    prior = build(registry, model=str(files["v2"]), prediction="epsilon")
    assert prior.prediction_type == "epsilon" and prior.resolution == 64
    reference = build(registry, model=str(files["v2-base-folder"]))
    assert torch.allclose(denoised(prior), denoised(reference), atol=1e-5)


def test_prediction_override_on_a_folder(registry, files) -> None:
    """The same weights in a v-prediction folder, read as epsilon, score as the epsilon folder does."""
    prior = build(registry, model=str(files["v2-folder"]), prediction="epsilon")
    reference = build(registry, model=str(files["v2-base-folder"]))
    assert prior.prediction_type == "epsilon"
    assert torch.equal(denoised(prior), denoised(reference))


def test_model_kind_from_the_context_width_or_the_recipe(files) -> None:
    checkpoint = read_checkpoint(files["v1"])
    unet_only = {k: v for k, v in checkpoint.shapes.items() if k.startswith("model.diffusion_model.")}
    with pytest.raises(SjcError, match="cannot tell whether .* set prior.model_kind"):
        detect_kind(unet_only, None, files["v1"])
    assert detect_kind(unet_only, None, files["v1"], model_kind="v2").prediction == "v_prediction"
    widened = {k: (s[0], 1024) if k.endswith("attn2.to_k.weight") else s for k, s in unet_only.items()}
    assert detect_kind(widened, None, files["v1"]).version == "v2"
    inpainting = {**unet_only, "model.diffusion_model.input_blocks.0.0.weight": (32, 9, 3, 3)}
    with pytest.raises(SjcError, match="inpainting or other checkpoint"):
        detect_kind(inpainting, None, files["v1"])
    with pytest.raises(SjcError, match="an SDXL checkpoint"):
        detect_kind({**unet_only, "conditioner.embedders.0.transformer.x": (1,)}, None, files["v1"])


class Sneaky(collections.OrderedDict):
    """A dict subclass: unpickling it would import and call this module's code."""


class Payload:
    def __reduce__(self):
        return (print, ("pickle code ran",))


@pytest.mark.parametrize(
    "payload", [Sneaky(a=torch.zeros(2)), {"state_dict": {"w": torch.zeros(1)}, "x": Payload()}]
)
def test_a_ckpt_with_objects_is_refused_in_one_line(registry, tmp_path: Path, payload, capfd) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save(payload, path)
    with pytest.raises(SjcError) as caught:
        build(registry, model=str(path))
    assert len(caught.value.problems) == 1
    line = caught.value.problems[0]
    assert "\n" not in line and str(path) in line and "weights_only=True" in line
    assert "pickle code ran" not in capfd.readouterr().out


def test_bad_files_are_one_line(registry, tmp_path: Path, files) -> None:
    (tmp_path / "model.pt").write_bytes(b"x")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    cases = {
        "model.pt": "unknown type",
        "broken.safetensors": "cannot read",
        "other.safetensors": "not a Stable Diffusion checkpoint",
        "missing.safetensors": "does not exist",
    }
    for name, words in cases.items():
        with pytest.raises(SjcError) as caught:
            build(registry, model=str(tmp_path / name))
        assert len(caught.value.problems) == 1 and words in caught.value.problems[0], caught.value.problems
        assert name in caught.value.problems[0]


@pytest.mark.slow  # a real `sjc run` subprocess
def test_cli_run_with_a_single_file(run_sjc, files, tmp_path: Path) -> None:
    """`sjc validate` and `sjc run` on a recipe whose model is a single file beside it (relative path)."""
    shutil.copyfile(files["v1"], tmp_path / "tiny.safetensors")
    recipe = tmp_path / "tiny-file.toml"
    recipe.write_text(
        f"""
name = "tiny-file"
steps = 2
output = "{(tmp_path / "runs").as_posix()}"
device = "cpu"
view_every = 2
checkpoint_every = 2

[prior]
name = "stable-diffusion"
model = "tiny.safetensors"
prompt = "a burger"

[field]
name = "voxel"
grid_size = 12

[camera]
test_frames = 2
"""
    )
    env = {"HF_HUB_OFFLINE": "1", "SJC_ALLOW_DOWNLOAD": None}
    code, _, err = run_sjc("validate", str(recipe), env=env)
    assert code == 0, err
    code, _, err = run_sjc("run", str(recipe), env=env)
    assert code == 0, err
    assert "prior.model 'tiny.safetensors': Stable Diffusion v1" in err
    run_dir = tmp_path / "runs" / "tiny-file-seed0"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    torch.save(Sneaky(a=torch.zeros(1)), tmp_path / "evil.ckpt")
    code, _, err = run_sjc(
        "run", str(recipe), "--set", "prior.model=evil.ckpt", "--run-dir", tmp_path / "r2", env=env
    )
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
    assert "evil.ckpt" in lines[-1] and "weights_only=True" in lines[-1]
