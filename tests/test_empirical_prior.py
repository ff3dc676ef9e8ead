"""The empirical prior: exact denoiser, chunking, camera conditioning, loading, memory."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from sjc_core.contracts import BuildContext, View
from sjc_core.errors import SjcError
from sjc_core.files.pictures import write_image
from sjc_core.fit.transforms import write_transforms
from sjc_core.plugins import load_registry
from sjc_core.recipes.recipe import validate_recipe
from sjc_core.render.cameras import camera_angles, eye_on_sphere, look_at, view_label
from sjc_plugins.priors.empirical import EmpiricalPrior

GEN = torch.Generator().manual_seed(0)


def brute_force(x: torch.Tensor, sigma: torch.Tensor | float, images: torch.Tensor) -> torch.Tensor:
    """Float64 softmax over explicit squared distances, no tricks."""
    xf = x.double().reshape(x.shape[0], -1)
    data = images.double().reshape(images.shape[0], -1)
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
    d2 = ((xf[:, None, :] - data[None, :, :]) ** 2).sum(-1)
    weights = torch.softmax(-d2 / (2 * s**2), dim=1)
    return (weights @ data).reshape(x.shape)


def random_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random pictures in [-1, 1] (closer to each other than white noise)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=gen)
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (fine * 1.6 - 0.8 + 0.2 * torch.rand(count, 3, size, size, generator=gen)).clamp(-1, 1)


# -- the denoiser ---------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_denoiser_matches_brute_force(precision: str) -> None:
    images = random_images(40, 16)
    prior = EmpiricalPrior(images, precision=precision, chunk_size=16)
    y = images[:3] * 0.6 + 0.1
    # float32 arithmetic: ~1e-7 measured; float64: ~1e-14 (the output keeps x's dtype)
    tolerance = 1e-5 if precision == "float32" else 1e-10
    for sigma in (1e-3, 0.01, 0.1, 1.0, 5.0, 30.0, 1e3, 1e5):
        x = y + sigma * torch.randn(y.shape, generator=GEN)
        out = prior.denoise(x, torch.tensor(sigma), None)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert (out.double() - brute_force(x, sigma, images)).abs().max() < 1e-5, sigma
        x64 = x.double()
        assert (prior.denoise(x64, sigma, None) - brute_force(x64, sigma, images)).abs().max() < tolerance, sigma


def test_denoiser_limits_and_per_sample_sigmas() -> None:
    images = random_images(10, 8)
    prior = EmpiricalPrior(images)
    x = images[[2, 7]] + 0.01 * torch.randn(2, 3, 8, 8, generator=GEN)
    # tiny sigma: the nearest image exactly; huge sigma: the mean of the set
    torch.testing.assert_close(prior.denoise(x, 1e-4, None), images[[2, 7]], rtol=0, atol=1e-6)
    torch.testing.assert_close(prior.denoise(x, 1e6, None), images.mean(0).expand(2, -1, -1, -1), rtol=0, atol=1e-5)
    # one sigma per sample
    sigmas = torch.tensor([0.05, 20.0])
    out = prior.denoise(x, sigmas, None)
    assert (out.double() - brute_force(x, sigmas, images)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="positive"):  # host values are checked (tensors are not read back)
        prior.denoise(x, [1.0, -1.0], None)
    with pytest.raises(ValueError, match="shape"):
        prior.denoise(torch.zeros(1, 3, 4, 4), 1.0, None)


def test_chunking_gives_the_same_result() -> None:
    images = random_images(50, 16)
    x = images[:4] + 3.0 * torch.randn(4, 3, 16, 16, generator=GEN)
    sigmas = torch.tensor([0.3, 3.0, 10.0, 40.0])
    whole = EmpiricalPrior(images, chunk_size=50).denoise(x, sigmas, None)
    for chunk in (1, 7, 16, 49):
        parts = EmpiricalPrior(images, chunk_size=chunk).denoise(x, sigmas, None)
        assert (parts - whole).abs().max() < 1e-6, chunk


def test_conditioning_restricts_the_candidates() -> None:
    images = random_images(30, 8)
    prior = EmpiricalPrior(images, chunk_size=4)
    subset = torch.tensor([3, 5, 11, 12, 20, 29])
    x = images[:2] + 2.0 * torch.randn(2, 3, 8, 8, generator=GEN)
    out = prior.denoise(x, 2.0, subset)
    assert (out.double() - brute_force(x, 2.0, images[subset])).abs().max() < 1e-5
    # the image itself is not a candidate: at tiny sigma the nearest candidate comes out
    near = prior.denoise(images[[0]], 1e-4, subset)
    nearest = int(((images[subset] - images[0]) ** 2).flatten(1).sum(1).argmin())
    torch.testing.assert_close(near, images[subset][[nearest]], rtol=0, atol=1e-6)


# -- a hand-made posed set ------------------------------------------------------------

AZIMUTHS = list(range(0, 360, 30))  # 12 cameras at polar draw 60 degrees
OVERHEAD = [(45.0, 10.0), (200.0, 5.0)]  # two cameras from above


def posed_folder(root: Path, size: int = 8) -> tuple[Path, list[tuple[float, float, float]]]:
    """transforms.json + one flat-coloured PNG per camera; returns (folder, [(az, v, radius)])."""
    cams = [(float(a), 60.0, 1.5) for a in AZIMUTHS] + [(a, v, 2.5) for a, v in OVERHEAD]
    frames = []
    for index, (azimuth, polar, radius) in enumerate(cams):
        colour = np.array([index / len(cams), 1 - index / len(cams), (index % 3) / 2])
        picture = np.broadcast_to(colour, (size, size, 3))
        write_image(root / "train" / f"r_{index}.png", (picture * 255).round().astype(np.uint8))
        frames.append((f"./train/r_{index}", look_at(eye_on_sphere(radius, azimuth, polar))))
    write_transforms(root / "transforms_train.json", 50.0, frames)
    return root, cams


def build(options: dict, base_dir: Path = Path(".")) -> EmpiricalPrior:
    """Build through the installed entry point, as a recipe would."""
    info = load_registry().get("priors", "empirical")
    return info.factory(info.options.model_validate(options), BuildContext(base_dir=base_dir))


def view_at(azimuth: float, polar: float, label: bool = True, radius: float = 1.5) -> View:
    pose = torch.as_tensor(look_at(eye_on_sphere(radius, azimuth, polar)))
    return View(label=view_label(azimuth, polar) if label else None, c2w=pose, fov_deg=50.0)


def test_camera_angles_invert_eye_on_sphere() -> None:
    rng = np.random.default_rng(0)
    azimuths, polars = rng.uniform(0, 360, 50), rng.uniform(1, 100, 50)
    poses = np.stack([look_at(eye_on_sphere(2.0, a, v)) for a, v in zip(azimuths, polars)])
    got_az, got_v = camera_angles(poses)
    np.testing.assert_allclose(got_v, polars, atol=1e-9)
    np.testing.assert_allclose(np.cos(np.radians(got_az - azimuths)), 1.0, atol=1e-12)


def test_label_conditioning_picks_images_with_the_same_label(tmp_path: Path) -> None:
    folder, _ = posed_folder(tmp_path / "set")
    prior = build({"images": str(folder), "resolution": 8, "view_conditioning": "label"})
    # by construction: front = azimuth in [315, 45), side = [45, 135) + [225, 315), back = [135, 225)
    assert prior.labels == ["front", "front", "side", "side", "side", "back", "back", "back",
                            "side", "side", "side", "front", "overhead", "overhead"]
    expected = {"front": [0, 1, 11], "side": [2, 3, 4, 8, 9, 10], "back": [5, 6, 7], "overhead": [12, 13]}
    for azimuth, polar, label in ((10, 60, "front"), (100, 70, "side"), (260, 50, "side"), (180, 90, "back"), (0, 5, "overhead")):
        cond = prior.condition(view_at(azimuth, polar))
        assert cond.tolist() == expected[label]
        # the label is recovered from the pose when the view carries none
        assert prior.condition(view_at(azimuth, polar, label=False)).tolist() == expected[label]
    assert prior.condition(None) is None
    assert prior.condition(View(label=None, c2w=None)) is None
    # cached: the same object comes back
    assert prior.condition(view_at(10, 60)) is prior.condition(view_at(20, 55))


def test_kernel_conditioning_is_a_hard_angular_cut(tmp_path: Path) -> None:
    folder, _ = posed_folder(tmp_path / "set")
    # at polar draw 60 (cos p = 1/3) neighbours 30 degrees of azimuth apart are 28.2 degrees
    # apart on the sphere, 60 apart -> 56.2 degrees
    wide = build({"images": str(folder), "resolution": 8, "view_conditioning": "kernel", "kernel_width_deg": 30})
    assert wide.condition(view_at(90, 60)).tolist() == [2, 3, 4]
    assert wide.condition(view_at(0, 60)).tolist() == [0, 1, 11]
    narrow = build({"images": str(folder), "resolution": 8, "view_conditioning": "kernel", "kernel_width_deg": 20})
    assert narrow.condition(view_at(90, 60)).tolist() == [3]
    # from below (polar draw 100, azimuth 0) nothing lies within 20 degrees: the nearest three
    angles = narrow.angles_to(eye_on_sphere(1.0, 0.0, 100.0))
    assert angles.min() > 20
    assert narrow.condition(view_at(0, 100)).tolist() == [0, 1, 11]
    # the kernel decides what the denoiser sees: the back image is not reachable from the front
    back = narrow.image(6)[None]
    out = narrow.denoise(back, 1e-3, narrow.condition(view_at(0, 60)))
    torch.testing.assert_close(out, narrow.image(0)[None], rtol=0, atol=1e-6)
    unconditioned = build({"images": str(folder), "resolution": 8})
    torch.testing.assert_close(unconditioned.denoise(back, 1e-3, unconditioned.condition(view_at(0, 60))), back, rtol=0, atol=1e-6)


def test_posed_set_gives_a_camera_hint_and_the_default_range(tmp_path: Path) -> None:
    folder, cams = posed_folder(tmp_path / "set")
    prior = build({"images": "set", "resolution": 8}, base_dir=tmp_path)  # relative to the recipe
    hint = prior.camera_hint
    assert hint is not None
    assert hint.radius == pytest.approx(np.mean([r for _, _, r in cams]), rel=1e-9)
    assert hint.fov_deg == pytest.approx(50.0, rel=1e-9)
    assert prior.channels == 3 and prior.value_range == (-1.0, 1.0) and prior.resolution == 8
    assert prior.count == len(cams)
    low, high = prior.default_sigma_range
    assert low == 0.1 and high == pytest.approx(20.0 * math.sqrt(3 * 8 * 8 / (3 * 64 * 64)))
    assert prior.sigmas[0].item() == pytest.approx(0.01) and prior.sigmas[-1].item() == pytest.approx(80.0)
    assert bool((prior.sigmas[1:] > prior.sigmas[:-1]).all())
    # pixels: the PNG's colour, mapped to [-1, 1] and back by to_rgb
    rgb = prior.to_rgb(prior.image(1)[None])
    assert rgb.min() >= 0 and rgb.max() <= 1
    expected = np.round(np.array([1 / 14, 13 / 14, 0.5]) * 255) / 255
    np.testing.assert_allclose(rgb[0, :, 0, 0].numpy(), expected, atol=1e-6)


def test_plain_folder_loads_mixed_sizes(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    write_image(folder / "a.png", np.full((16, 16, 3), 255, np.uint8))
    write_image(folder / "b.png", np.zeros((24, 40, 3), np.uint8))  # wide: centre-cropped, resized
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent: the white background shows
    write_image(folder / "c.png", rgba)
    (folder / "notes.txt").write_text("not an image")
    prior = build({"images": str(folder), "resolution": 8})
    assert prior.count == 3 and prior.camera_hint is None and prior.labels is None
    torch.testing.assert_close(prior.image(0), torch.ones(3, 8, 8))
    torch.testing.assert_close(prior.image(1), -torch.ones(3, 8, 8))
    torch.testing.assert_close(prior.image(2), torch.ones(3, 8, 8))
    assert prior.condition(View(label="front")) is None


def test_option_and_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(SjcError, match=r"prior\.images: .*nowhere: no such folder"):
        build({"images": str(tmp_path / "nowhere")})
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no pictures here")
    with pytest.raises(SjcError, match=r"empty: no images"):
        build({"images": str(empty)})
    plain = tmp_path / "plain"
    write_image(plain / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SjcError, match=r"view_conditioning: 'kernel' needs cameras"):
        build({"images": str(plain), "view_conditioning": "kernel"})
    options = load_registry().get("priors", "empirical").options
    for bad in ({"images": "x", "sigma_min": 5.0, "sigma_max": 1.0}, {"images": "x", "view_conditioning": "soft"},
                {"images": "x", "kernel_width_deg": 0}, {"images": "x", "count": 1}, {"images": "x", "scale": -1.0},
                {"image": "x"}):
        with pytest.raises(ValidationError):
            options.model_validate(bad)


def test_recipe_errors_name_the_option(tmp_path: Path) -> None:
    raw = {"prior": {"name": "empirical", "images": "x", "view_conditioning": "soft", "kernel_width_deg": -2}}
    with pytest.raises(SjcError) as info:
        validate_recipe(raw, load_registry(warn=lambda _: None), base_dir=tmp_path)
    text = str(info.value)
    assert "prior.view_conditioning" in text and "prior.kernel_width_deg" in text


def test_transforms_errors_are_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": [
        {"file_path": "./missing", "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(SjcError, match="image not found"):
        build({"images": str(folder)})


# -- memory ---------------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, torch
    from sjc_plugins.priors.empirical import EmpiricalPrior

    def status(key):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    def reset_peak():
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")

    torch.set_num_threads(1)
    count, side = 2048, 64
    images = torch.rand(count, 3, side, side).mul_(2).sub_(1)
    reset_peak(); before = status("VmRSS")
    prior = EmpiricalPrior(images, chunk_size=256)
    build = status("VmHWM") - before
    del images
    x = torch.randn(8, 3, side, side)
    reset_peak(); before = status("VmRSS")
    out = prior.denoise(x, torch.full((8,), 3.0), None)
    subset = prior.denoise(x, 3.0, torch.arange(0, count, 3))
    denoise = status("VmHWM") - before
    print(json.dumps({"build": build, "denoise": denoise, "finite": bool(out.isfinite().all() and subset.isfinite().all())}))
    """
)


def test_thousands_of_images_fit_in_modest_memory() -> None:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset the peak resident size")
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    data_bytes = 2048 * 3 * 64 * 64 * 4  # 100 MB of float32 pixels
    naive = 8 * data_bytes  # broadcasting 8 noises against every image at once
    assert figures["finite"]
    # building keeps one centred float32 copy plus small float64 temporaries (measured
    # 1.5x the data; a float64 copy of the set would make it 3x)
    assert figures["build"] < 2.5 * data_bytes, figures
    # eight noises against 2048 images: chunk-sized work only (measured 3 to 36 MB)
    assert figures["denoise"] < 64 * 2**20, figures
    assert figures["denoise"] < naive / 10
