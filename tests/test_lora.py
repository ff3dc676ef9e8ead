"""LoRA on the stable-diffusion prior: kohya and diffusers/peft files, built here for the tiny
models, change the denoiser exactly as merging W + scale * (alpha / rank) * B @ A by hand does."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sjc_core.contracts import BuildContext, View
from sjc_core.errors import SjcError
from sjc_core.plugins import load_registry

try:
    from ldm_files import build_tiny_sd, write_single_file
    from tiny_models import build_sd_folder
except ImportError:  # tests/ imported as a package
    from tests.ldm_files import build_tiny_sd, write_single_file
    from tests.tiny_models import build_sd_folder

pytest.importorskip("peft")

RANK = 2
UNET_TARGETS = [
    f"down_blocks.0.attentions.0.transformer_blocks.0.{attn}.{proj}"
    for attn in ("attn1", "attn2")
    for proj in ("to_q", "to_k", "to_v", "to_out.0")
] + ["up_blocks.1.attentions.0.proj_in"]  # a 1x1 convolution in SD 1.x
TEXT_TARGETS = [
    f"encoder.layers.{i}.{name}"
    for i in (0, 1)
    for name in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
        "mlp.fc1",
        "mlp.fc2",
    )
]


def make_lora(
    unet, text_encoder, layout: str, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(file tensors, hand-computed weight deltas per target at scale 1) in ``layout``:
    kohya (alpha 1 of rank 2: a factor 1/2), peft (lora_A/lora_B, no alpha: factor 1) or
    the older diffusers form (UNet lora.down/lora.up, text encoder lora_linear_layer)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}
    for part, model, targets in (("unet", unet, UNET_TARGETS), ("text", text_encoder, TEXT_TARGETS)):
        for target in targets:
            weight = model.get_submodule(target).weight
            down = torch.randn(RANK, *weight.shape[1:], generator=generator) * 0.3
            up = torch.randn(weight.shape[0], RANK, *([1] * (weight.ndim - 2)), generator=generator) * 0.3
            factor = 0.5 if layout == "kohya" else 1.0
            deltas[f"{part}:{target}"] = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * factor
            if layout == "kohya":
                stem = ("lora_unet_" if part == "unet" else "lora_te_text_model_") + target.replace(".", "_")
                tensors |= {
                    f"{stem}.lora_down.weight": down,
                    f"{stem}.lora_up.weight": up,
                    f"{stem}.alpha": torch.tensor(1.0),
                }
            else:
                stem = f"unet.{target}" if part == "unet" else f"text_encoder.text_model.{target}"
                a, b = ("lora_A", "lora_B") if layout == "peft" else ("lora.down", "lora.up")
                if layout == "old" and part == "text":  # diffusers 0.2x text-encoder names
                    a, b = ("lora_linear_layer.down", "lora_linear_layer.up")
                tensors |= {f"{stem}.{a}.weight": down, f"{stem}.{b}.weight": up}
    return tensors, deltas


def load_modules(folder: Path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    return UNet2DConditionModel.from_pretrained(folder / "unet"), CLIPTextModel.from_pretrained(
        folder / "text_encoder"
    )


def merged_folder(folder: Path, out: Path, deltas_and_scales) -> Path:
    """The folder with every LoRA merged by hand into the UNet and text-encoder weights."""
    shutil.copytree(folder, out)
    unet, text_encoder = load_modules(folder)
    with torch.no_grad():
        for deltas, scale in deltas_and_scales:
            for key, delta in deltas.items():
                part, target = key.split(":")
                model = unet if part == "unet" else text_encoder
                model.get_submodule(target).weight += scale * delta
    shutil.rmtree(out / "unet"), shutil.rmtree(out / "text_encoder")
    unet.save_pretrained(out / "unet")
    text_encoder.save_pretrained(out / "text_encoder")
    return out


@pytest.fixture(scope="module")
def registry():
    return load_registry(warn=lambda message: None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("lora")
    folder = build_sd_folder(root / "tiny-sd")
    unet, text_encoder = load_modules(folder)
    files, deltas = {}, {}
    for seed, layout in enumerate(("kohya", "peft", "old")):
        tensors, deltas[layout] = make_lora(unet, text_encoder, layout, seed)
        files[layout] = root / f"{layout}.safetensors"
        save_file(tensors, str(files[layout]))
    return root, folder, files, deltas


def build(registry, base_dir: Path = Path("."), **options):
    info = registry.get("priors", "stable-diffusion")
    options = info.options(**{"prompt": "a burger", "guidance_scale": 5.0, **options})
    return info.factory(options, BuildContext(base_dir=base_dir))


def denoised(prior) -> torch.Tensor:
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(7)) * 2.0
    return prior.denoise(x, torch.tensor([0.5, 3.0]), prior.condition(View(label="side")))


@pytest.mark.parametrize("layout, scale", [("kohya", 0.7), ("peft", 1.0), ("old", -0.4)])
def test_lora_equals_merging_by_hand(registry, setup, layout, scale) -> None:
    root, folder, files, deltas = setup
    reference = build(
        registry, model=str(merged_folder(folder, root / f"merged-{layout}", [(deltas[layout], scale)]))
    )
    with_lora = build(registry, model=str(folder), lora=[{"path": str(files[layout]), "scale": scale}])
    plain = build(registry, model=str(folder))
    expected, got = denoised(reference), denoised(with_lora)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert (denoised(plain) - expected).abs().max() > 1e-2  # the LoRA really changes the denoiser
    assert torch.allclose(with_lora.condition(None).embedding, reference.condition(None).embedding, atol=1e-5)
    # merged and unwrapped: plain modules, the parameter names of a model without LoRA
    assert set(with_lora.unet.state_dict()) == set(plain.unet.state_dict())
    assert type(with_lora.unet.get_submodule(UNET_TARGETS[0])) is torch.nn.Linear


def test_two_loras_with_scales_and_a_bare_path(registry, setup) -> None:
    root, folder, files, deltas = setup
    reference = build(
        registry,
        model=str(merged_folder(folder, root / "merged-two", [(deltas["kohya"], 1.0), (deltas["peft"], 0.25)])),
    )
    with_lora = build(
        registry, model=str(folder), lora=[str(files["kohya"]), {"path": str(files["peft"]), "scale": 0.25}]
    )
    assert torch.allclose(denoised(with_lora), denoised(reference), atol=1e-5)


def test_lora_on_a_single_file_checkpoint(registry, setup, tmp_path: Path, capfd) -> None:
    """The single-file loader's modules take LoRA the same way (v1 ldm file, kohya layout)."""
    sd = build_tiny_sd("v1", seed=5)
    write_single_file(sd, tmp_path / "tiny.safetensors")
    tensors, deltas = make_lora(sd.unet, sd.text_encoder, "kohya", seed=9)
    save_file(tensors, str(tmp_path / "style.safetensors"))
    with_lora = build(
        registry, tmp_path, model="tiny.safetensors", lora=[{"path": "style.safetensors", "scale": 0.5}]
    )
    with torch.no_grad():
        for key, delta in deltas.items():
            part, target = key.split(":")
            (sd.unet if part == "unet" else sd.text_encoder).get_submodule(target).weight += 0.5 * delta
    merged = write_single_file(sd, tmp_path / "merged.safetensors")
    assert torch.allclose(denoised(with_lora), denoised(build(registry, model=str(merged))), atol=1e-5)
    capfd.readouterr()
    with pytest.raises(SjcError) as caught:  # a LoRA made for the other tiny model (text width 32, not 64)
        build(registry, tmp_path, model="tiny.safetensors", lora=[str(setup[2]["kohya"])])
    assert len(caught.value.problems) == 1 and "does not fit this model: size mismatch" in caught.value.problems[0]
    assert "lora" not in capfd.readouterr().err.lower()  # diffusers' own error log stays quiet


def test_bad_lora_files_are_one_line(registry, setup, tmp_path: Path) -> None:
    _, folder, _, _ = setup
    save_file({"something.weight": torch.zeros(2, 2)}, str(tmp_path / "nothing.safetensors"))
    (tmp_path / "style.txt").write_text("x")
    cases = {
        str(tmp_path / "missing.safetensors"): "does not exist",
        str(tmp_path / "nothing.safetensors"): "nothing.safetensors",
        str(tmp_path / "style.txt"): "not a LoRA file",
    }
    for path, words in cases.items():
        with pytest.raises(SjcError) as caught:
            build(registry, model=str(folder), lora=[path])
        assert len(caught.value.problems) == 1 and words in caught.value.problems[0], caught.value.problems
        assert caught.value.problems[0].startswith("prior.lora.0")


def test_validate_checks_lora_files_and_list_plugins_documents_it(setup, tmp_path: Path) -> None:
    _, folder, files, _ = setup
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'name = "r"\nsteps = 1\n[prior]\nname = "stable-diffusion"\nmodel = "{folder.as_posix()}"\n'
        f'prompt = "a burger"\nlora = ["{files["kohya"].as_posix()}", {{path = "gone.safetensors", scale = 0.5}}]\n'
        '[field]\nname = "voxel"\n'
    )
    run = [sys.executable, "-m", "sjc_core"]
    result = subprocess.run([*run, "validate", str(recipe)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "prior.lora.1.path" in errors[0] and "gone.safetensors" in errors[0]
    listing = subprocess.run(
        [*run, "list-plugins", "--kind", "priors"], capture_output=True, text=True, timeout=120
    )
    assert listing.returncode == 0
    assert "lora" in listing.stdout and "kohya" in listing.stdout


def test_lora_on_zero123_equals_merging_by_hand(registry, tmp_path: Path) -> None:
    """zero123's UNet is a Stable Diffusion UNet: the same files apply to it (UNet keys only)."""
    from diffusers import UNet2DConditionModel

    try:
        from test_zero123 import write_rgba
        from tiny_models import build_zero123_folder
    except ImportError:
        from tests.test_zero123 import write_rgba
        from tests.tiny_models import build_zero123_folder

    folder = build_zero123_folder(tmp_path / "tiny-zero123", "cc_projection")
    picture = write_rgba(tmp_path / "object.png")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    generator = torch.Generator().manual_seed(3)
    targets = [name for name, _ in unet.named_modules() if name.endswith(("attn1.to_q", "attn2.to_v"))]
    tensors, merged = {}, {}
    for target in targets:
        weight = unet.get_submodule(target).weight
        down = torch.randn(RANK, weight.shape[1], generator=generator) * 0.3
        up = torch.randn(weight.shape[0], RANK, generator=generator) * 0.3
        tensors |= {f"unet.{target}.lora_A.weight": down, f"unet.{target}.lora_B.weight": up}
        merged[target] = weight.detach() + 0.6 * up @ down
    save_file(tensors, str(tmp_path / "z.safetensors"))
    by_hand = tmp_path / "merged"
    shutil.copytree(folder, by_hand)
    with torch.no_grad():
        for target, weight in merged.items():
            unet.get_submodule(target).weight.copy_(weight)
    shutil.rmtree(by_hand / "unet")
    unet.save_pretrained(by_hand / "unet")

    info = registry.get("priors", "zero123")
    common = {"image": str(picture), "elevation_deg": 10.0, "azimuth_deg": 30.0, "distance": 2.0}
    with_lora = info.factory(
        info.options(model=str(folder), lora=[{"path": str(tmp_path / "z.safetensors"), "scale": 0.6}], **common),
        BuildContext(),
    )
    plain = info.factory(info.options(model=str(folder), **common), BuildContext())
    reference = info.factory(info.options(model=str(by_hand), **common), BuildContext())
    x = torch.randn(1, 4, with_lora.resolution, with_lora.resolution, generator=torch.Generator().manual_seed(5))

    def out(prior):
        from sjc_core.render.cameras import look_at

        pose = View(label="side", c2w=torch.as_tensor(look_at([0.0, 0.5, 2.0])), fov_deg=40.0)
        return prior.denoise(x, torch.tensor([1.5]), prior.condition(pose))

    torch.testing.assert_close(out(with_lora), out(reference), rtol=1e-4, atol=1e-5)
    assert (out(with_lora) - out(plain)).abs().max() > 1e-3  # the adapter did something
    with pytest.raises(SjcError, match=r"prior\.lora\.0\.path"):
        info.options(model=str(folder), lora=["missing.safetensors"], **common).preflight(BuildContext())
