"""The reference-view loss: built through the registry, attached to a field by the trainer's
hook, and able to fit a field to the input picture at its camera."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from sjc_core.contracts import BuildContext
from sjc_core.errors import SjcError
from sjc_core.plugins import load_registry
from sjc_core.render.cameras import intrinsics
from sjc_core.render.view import render_view
from sjc_core.training.optim import Adamax

try:
    from tiny_models import ZERO123_LATENT_SIZE, build_zero123_folder
except ImportError:  # tests/ imported as a package
    from tests.tiny_models import ZERO123_LATENT_SIZE, build_zero123_folder

PIXEL_PRIOR = SimpleNamespace(value_range=(-1.0, 1.0), resolution=32, channels=3)  # what the loss reads of a pixel prior
FIT_STEPS = 100
PSNR_THRESHOLD = 28.0  # dB at the picture's own camera after FIT_STEPS (measured: ~32 dB)


@pytest.fixture(scope="module")
def registry():
    return load_registry(warn=lambda message: None)


def disc_picture(path: Path, size: int = 64, alpha: bool = False) -> Path:
    """A red disc with a blue band, on mid grey (RGB) or on transparency (RGBA)."""
    import imageio.v3 as iio

    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2 + 2) ** 2 < (size * 0.28) ** 2
    image = np.zeros((size, size, 4 if alpha else 3), np.uint8)
    image[..., :3] = 128
    image[disc, :3] = (210, 60, 40)
    image[disc & (abs(yy - size / 2) < size / 16), :3] = (40, 60, 220)
    if alpha:
        image[..., 3] = np.where(disc, 255, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, image)
    return path


def make_loss(registry, **options):
    info = registry.get("losses", "reference-view")
    return info.factory(info.options(**options), BuildContext())


def make_field(registry, channels: int = 3, grid_size: int = 32):
    info = registry.get("fields", "voxel")
    value_range = (-1.0, 1.0) if channels == 3 else None
    return info.factory(info.options(grid_size=grid_size), BuildContext(channels=channels, value_range=value_range))


def fit(loss, field, steps: int) -> list[float]:
    optimizer = Adamax(field.param_groups(0.05), lr=0.05)
    values = []
    for step in range(steps):
        value = loss(None, step / steps)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        values.append(float(value.detach()))
    return values


def psnr_at_reference(loss) -> float:
    with torch.no_grad():
        render = loss.render_reference()
    mse = float((((render.image + 1) / 2 - (loss.target + 1) / 2) ** 2).mean())
    return -10 * math.log10(mse)


def test_fits_a_pixel_field_to_the_picture_at_its_camera(registry, tmp_path: Path) -> None:
    picture = disc_picture(tmp_path / "disc.png")
    loss = make_loss(registry, image=str(picture), elevation_deg=10.0, azimuth_deg=20.0, distance=2.0, fov_deg=40.0)
    field = make_field(registry)
    loss.attach(field=field, prior=PIXEL_PRIOR, device=torch.device("cpu"))
    # The target is the picture in the prior's value range, at the prior's resolution.
    assert loss.target.shape == (3, 32, 32) and float(loss.target.min()) >= -1 and float(loss.target.max()) <= 1
    before = psnr_at_reference(loss)
    fit(loss, field, FIT_STEPS)
    after = psnr_at_reference(loss)
    assert after > PSNR_THRESHOLD and after > before + 10, (before, after)
    # The camera is the one asked for: another view of the fitted field does not show the picture.
    elsewhere = render_view(field, intrinsics(40.0, 32, 32), loss.camera.__class__(10.0, 110.0, 2.0, 40.0).c2w(), 32, 32)
    mse = float((((elsewhere.image.detach() + 1) / 2 - (loss.target + 1) / 2) ** 2).mean())
    assert -10 * math.log10(mse) < after - 8


def test_silhouette_follows_the_alpha_channel(registry, tmp_path: Path) -> None:
    picture = disc_picture(tmp_path / "disc.png", alpha=True)
    loss = make_loss(registry, image=str(picture), rgb_weight=0.0, mask_weight=10.0)
    field = make_field(registry)
    loss.attach(field=field, prior=PIXEL_PRIOR, device=torch.device("cpu"))
    assert loss.picture.has_alpha and float(loss.target[:, 0, 0].min()) == pytest.approx(1.0)  # on white
    before = float((loss.render_reference().opacity.detach() - loss.mask).abs().mean())
    fit(loss, field, 60)
    after = float((loss.render_reference().opacity.detach() - loss.mask).abs().mean())
    assert after < 0.08 and after < before / 3, (before, after)


def test_loss_value_and_gradient_form(registry, tmp_path: Path) -> None:
    """weight * sum (x - t)^2 / 2 for colour and silhouette: the gradient on the render is weight * (x - t)."""
    loss = make_loss(registry, image=str(disc_picture(tmp_path / "d.png")), rgb_weight=3.0, mask_weight=2.0)
    loss.attach(field=make_field(registry), prior=PIXEL_PRIOR, device=torch.device("cpu"))
    with torch.no_grad():
        render = loss.render_reference()
        expected = 3.0 * 0.5 * float(((render.image - loss.target) ** 2).sum()) + 2.0 * 0.5 * float(
            ((render.opacity - loss.mask) ** 2).sum()
        )
        # The default warm-up (DreamGaussian's) ramps the weights linearly over the whole run.
        assert float(loss(None, 0.3)) == pytest.approx(0.3 * expected, rel=1e-5)
        assert float(loss(None, 1.0)) == pytest.approx(expected, rel=1e-5)


def test_warm_up_schedule(registry, tmp_path: Path) -> None:
    loss = make_loss(registry, image=str(disc_picture(tmp_path / "d.png")), warmup_fraction=0.5, warmup_start=0.2)
    assert [loss.weight_factor(p) for p in (0.0, 0.25, 0.5, 0.9)] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    plain = make_loss(registry, image=str(disc_picture(tmp_path / "e.png")), warmup_fraction=0.0)
    assert plain.weight_factor(0.0) == 1.0


def test_camera_from_options_then_prior_then_defaults(registry, tmp_path: Path) -> None:
    picture = disc_picture(tmp_path / "d.png")
    reference = SimpleNamespace(elevation_deg=12.0, azimuth_deg=-30.0, distance=1.7, fov_deg=35.0)
    prior = SimpleNamespace(**vars(PIXEL_PRIOR), reference=reference)
    loss = make_loss(registry, image=str(picture), azimuth_deg=45.0)
    loss.attach(field=make_field(registry, grid_size=8), prior=prior, device=torch.device("cpu"))
    assert (loss.camera.elevation_deg, loss.camera.azimuth_deg, loss.camera.distance, loss.camera.fov_deg) == (12.0, 45.0, 1.7, 35.0)
    loss.attach(field=make_field(registry, grid_size=8), prior=PIXEL_PRIOR, device=torch.device("cpu"))
    assert (loss.camera.elevation_deg, loss.camera.azimuth_deg, loss.camera.distance, loss.camera.fov_deg) == (0.0, 45.0, 2.0, 49.1)
    eye = loss.camera.c2w()[:3, 3]  # azimuth 45 in the [camera] convention: between -x (front) and +z
    np.testing.assert_allclose(eye, 2.0 * np.array([-math.cos(math.pi / 4), 0.0, math.sin(math.pi / 4)]), atol=1e-12)


def test_needs_a_picture_and_a_way_to_encode_it(registry, tmp_path: Path) -> None:
    with pytest.raises(SjcError, match=r"losses.reference-view.image: required"):
        make_loss(registry).attach(field=make_field(registry, grid_size=8), prior=PIXEL_PRIOR, device="cpu")
    latent_prior = SimpleNamespace(value_range=None, resolution=16, channels=4)
    with pytest.raises(SjcError, match="cannot encode a picture"):
        make_loss(registry, image=str(disc_picture(tmp_path / "d.png"))).attach(
            field=make_field(registry, channels=4, grid_size=8), prior=latent_prior, device="cpu"
        )


def test_bad_options_and_pictures_are_one_line(registry, tmp_path: Path) -> None:
    info = registry.get("losses", "reference-view")
    with pytest.raises(ValidationError, match="expected 'auto' or three numbers"):
        info.options(background=[1.0, 2.0, 0.0])
    with pytest.raises(ValidationError, match="both 0"):
        info.options(rgb_weight=0.0, mask_weight=0.0)
    with pytest.raises(SjcError) as caught:
        make_loss(registry, image=str(tmp_path / "missing.png"))
    assert str(caught.value).startswith("losses.reference-view.image:") and "no such file" in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "flat.png", np.full((16, 16, 3), 30, np.uint8))
    with pytest.raises(SjcError, match="no foreground"):
        info.options(image=str(tmp_path / "flat.png")).preflight(BuildContext())
    # With an explicit background colour the same flat picture is all foreground.
    assert info.options(image=str(tmp_path / "flat.png"), background=[1.0, 1.0, 1.0]).preflight(BuildContext()) is None


def test_sjc_validate_reports_a_missing_loss_picture(run_sjc, tmp_path: Path) -> None:
    data = Path(__file__).resolve().parents[1] / "data" / "demo"
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[prior]\nname = "empirical"\nimages = {json.dumps(str(data))}\n[[losses]]\nname = "reference-view"\nimage = "nope.png"\n'
    )
    code, _, err = run_sjc("validate", recipe)
    assert code == 2 and "losses.reference-view.image" in err and "nope.png" in err and "Traceback" not in err


def test_the_trainer_attaches_it_and_steps(registry, tmp_path: Path) -> None:
    """build_components calls attach: with the empirical prior over a posed set, a step has the term."""
    from sjc_core.recipes.recipe import load_recipe
    from sjc_core.training.trainer import Trainer, build_components

    data = Path(__file__).resolve().parents[1] / "data" / "demo"
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text(
        f"""
steps = 3
device = "cpu"
[prior]
name = "empirical"
images = {json.dumps(str(data))}
[field]
name = "voxel"
grid_size = 16
[[losses]]
name = "reference-view"
image = {json.dumps(str(data / "train" / "r_084.png"))}
elevation_deg = 7.59
azimuth_deg = -2.15
distance = 1.5
fov_deg = 50.0
warmup_fraction = 0.0
"""
    )
    recipe = load_recipe(recipe_file, registry)
    parts = build_components(recipe, torch.device("cpu"))
    (name, loss), = parts.losses
    assert name == "reference-view" and loss.field is parts.field and loss.target.shape == (3, 64, 64)
    trainer = Trainer.create(recipe, parts)
    results = [trainer.train_step() for _ in range(2)]
    Trainer.fetch(results)
    assert all(math.isfinite(r.terms["reference-view"]) and r.terms["reference-view"] > 0 for r in results)


@pytest.fixture(scope="module")
def zero123(registry, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("zero123-loss")
    folder = build_zero123_folder(root / "tiny-zero123")
    picture = disc_picture(root / "object.png", alpha=True)
    info = registry.get("priors", "zero123")
    return info.factory(info.options(model=str(folder), image=str(picture), distance=2.0), BuildContext())


def test_latent_field_fits_the_pictures_vae_latent(registry, zero123) -> None:
    """With the zero123 prior the loss takes its picture and camera, and compares latents."""
    loss = make_loss(registry)
    field = make_field(registry, channels=4, grid_size=24)
    loss.attach(field=field, prior=zero123, device=torch.device("cpu"))
    assert loss.picture is zero123.picture and loss.camera == zero123.reference
    expected = zero123.encode_rgb(torch.from_numpy(zero123.picture.rgb).permute(2, 0, 1)[None])[0]
    torch.testing.assert_close(loss.target, expected)
    assert loss.target.shape == (4, ZERO123_LATENT_SIZE, ZERO123_LATENT_SIZE)
    error = lambda: float(((loss.render_reference().image.detach() - loss.target) ** 2).mean())
    before = error()
    fit(loss, field, 80)
    assert error() < before / 20, (before, error())


def test_near_plane_keeps_voxels_in_front_of_the_camera_out(registry, tmp_path: Path) -> None:
    """Samples nearer than ``near`` to the picture's camera are skipped (default: half its
    distance, as sjc fit): a screen of voxels just in front of the camera cannot paint the picture."""
    picture = str(disc_picture(tmp_path / "d.png"))
    field = make_field(registry, grid_size=16)
    with torch.no_grad():
        field.density_grid.fill_(50.0)  # dense everywhere: the first samples decide the render
    default = make_loss(registry, image=picture, distance=1.6, warmup_fraction=0.0)
    default.attach(field=field, prior=PIXEL_PRIOR, device=torch.device("cpu"))
    assert default.near == pytest.approx(0.8) and float(default.rays[2].min()) >= 0.8 - 1e-6
    none = make_loss(registry, image=picture, distance=1.6, near=0.0, warmup_fraction=0.0)
    none.attach(field=field, prior=PIXEL_PRIOR, device=torch.device("cpu"))
    with torch.no_grad():
        near_depth = float(default.render_reference().depth.mean())
        full = none.render_reference()
        plain = render_view(field, intrinsics(49.1, 32, 32), none.camera.c2w(), 32, 32)
    torch.testing.assert_close(full.image, plain.image)  # near = 0 is the ordinary render
    assert near_depth > float(full.depth.mean()) + 0.1


@pytest.mark.slow  # the benchmark end to end on a tiny suite object: ~15 s
def test_image_to_3d_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/image_to_3d.py runs every arm and reports a PSNR for each (a smoke run)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    suite = tmp_path / "suite"
    made = subprocess.run(
        [sys.executable, str(root / "scripts" / "make_object_suite.py"), "--out", str(suite), "--objects", "signpost",
         "--views", "12", "--test", "3", "--size", "32"],
        capture_output=True, text=True, timeout=600,
    )
    assert made.returncode == 0, made.stderr
    report = tmp_path / "report.json"
    ran = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "image_to_3d.py"), "--suite", str(suite), "--objects", "signpost",
         "--steps", "3", "--fit-steps", "3", "--threads", "1", "--json", str(report)],
        capture_output=True, text=True, timeout=600,
    )
    assert ran.returncode == 0, ran.stderr
    row = json.loads(report.read_text())["objects"][0]
    assert row["train_views"] == 12 and row["reference"]["fov_deg"] > 0
    for arm in ("image+prior", "prior only", "picture only"):
        assert math.isfinite(row[arm]["psnr_db_at"]["3"]) and math.isfinite(row[arm]["reference_view_db_at"]["3"])
    assert "fit" in row and "signpost" in ran.stdout
