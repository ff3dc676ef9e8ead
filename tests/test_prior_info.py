"""``sjc prior-info``: what a model file or folder is, read from headers and configs only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

try:
    from ldm_files import build_tiny_sd, write_folder, write_single_file
except ImportError:  # tests/ imported as a package
    from tests.ldm_files import build_tiny_sd, write_folder, write_single_file


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prior-info")
    v1, v2 = build_tiny_sd("v1"), build_tiny_sd("v2", seed=2)
    return {
        "v1": write_single_file(v1, root / "tiny-v1.safetensors"),
        "v2-base": write_single_file(v2, root / "tiny-v2-base.ckpt", {"global_step": 875000}),
        "folder": write_folder(v1, root / "tiny-v1-folder", "epsilon"),
        "root": root,
    }


def test_single_file_text_and_json(run_sjc, models) -> None:
    code, out, err = run_sjc("prior-info", models["v1"])
    assert code == 0, err
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert lines["kind"] == "Stable Diffusion v1 (from the CLIP text encoder keys)"
    assert lines["prediction"].startswith("epsilon (")
    assert lines["resolution"] == "128x128 pictures, latents 64x64"  # the tiny VAE halves; SD's gives 512
    assert lines["channels"] == "4 latent channels in, 4 out"
    total = sum(t.numel() for t in load_file(str(models["v1"])).values())
    assert lines["parameters"].endswith(f"total {total:,}")

    code, out, err = run_sjc("prior-info", models["v2-base"], "--json")
    assert code == 0, err
    found = json.loads(out)
    assert found["kind"] == "Stable Diffusion v2 (from the OpenCLIP text encoder keys)"
    assert found["prediction"] == "epsilon (global_step 875000: the SD 2-base release)"
    assert found["global_step"] == 875000 and found["resolution"].endswith("latents 64x64")
    state = torch.load(models["v2-base"], weights_only=True)["state_dict"]
    unet = sum(t.numel() for k, t in state.items() if k.startswith("model.diffusion_model."))
    assert found["parameters"]["unet"] == unet and found["parameters"]["total"] == sum(
        t.numel() for t in state.values()
    )


def test_diffusers_folder_and_recipe(run_sjc, models) -> None:
    from diffusers import UNet2DConditionModel

    code, out, err = run_sjc("prior-info", models["folder"], "--json")
    assert code == 0, err
    found = json.loads(out)
    unet = UNet2DConditionModel.from_pretrained(models["folder"] / "unet")
    assert found["format"] == "diffusers folder" and found["prediction"].startswith("epsilon")
    assert found["parameters"]["unet"] == sum(p.numel() for p in unet.parameters())
    recipe = models["root"] / "r.toml"
    recipe.write_text(f'[prior]\nname = "stable-diffusion"\nmodel = "{models["v1"].name}"\nprompt = "a rose"\n')
    code, out, err = run_sjc("prior-info", recipe)
    assert code == 0, err
    assert "kind: Stable Diffusion v1" in out and f"model: {models['root']}" in out


def test_bad_models_are_one_line(run_sjc, models, tmp_path: Path) -> None:
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 12)
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    torch.save({"x": Path("/")}, tmp_path / "object.ckpt")
    cases = {
        "missing.ckpt": "no such file",
        "broken.safetensors": "cannot read",
        "other.safetensors": "is not a model the installed priors recognise",
        "object.ckpt": "weights_only=True",
    }
    for name, words in cases.items():
        code, out, err = run_sjc("prior-info", tmp_path / name)
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and "Traceback" not in err, err
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0] and name in lines[0], err


def test_describing_builds_nothing(models) -> None:
    """Headers only: neither diffusers nor transformers is imported, no module is built."""
    probe = (
        "import sys\nfrom sjc_plugins.priors.sd_inspect import describe_model\n"
        f"found = describe_model({str(models['v1'])!r})\n"
        "assert found['kind'].startswith('Stable Diffusion v1'), found\n"
        "print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
