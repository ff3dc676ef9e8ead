"""`sjc render RUN_DIR --hd`: poses, subpixel rays, and the two videos of real runs with tiny priors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sjc_core.cli import build_app
from sjc_core.files.pictures import read_video_frames
from sjc_core.plugins import load_registry
from sjc_core.recipes.model import CameraConfig
from sjc_core.recipes.recipe import load_recipe
from sjc_core.render.cameras import intrinsics, spiral_path
from sjc_core.render.hd import DEPTH_VIDEO, IMAGE_VIDEO, hd_poses
from sjc_core.runs import engine

try:
    from tiny_models import SD_LATENT_SIZE, build_sd_folder
except ImportError:  # run from the repository root as a package
    from tests.tiny_models import SD_LATENT_SIZE, build_sd_folder


def test_default_poses_are_the_reference_spiral_without_its_overhead_start() -> None:
    camera = CameraConfig()
    kept = hd_poses(camera, 1.5, 140, 0.3)
    reference = spiral_path(1.5, 1.5, 200, 3)[60:]  # highres_final_vis: 200 poses, skip 60
    assert len(kept) == 140
    for ours, theirs in zip(kept, reference):
        np.testing.assert_allclose(ours, theirs)


@pytest.mark.parametrize("frames", [1, 7, 50])
def test_frame_count_is_what_was_asked(frames: int) -> None:
    assert len(hd_poses(CameraConfig(), 1.5, frames, 0.3)) == frames
    assert len(hd_poses(CameraConfig(test_path="orbit"), 1.5, frames, 0.3)) == frames


def test_orbit_paths_skip_nothing() -> None:
    camera = CameraConfig(test_path="orbit", orbit_elevation=20.0)
    poses = hd_poses(camera, 2.0, 8, 0.3)
    np.testing.assert_allclose(poses[0][:3, 3], [0, 2 * np.sin(np.radians(20)), 2 * np.cos(np.radians(20))])


@pytest.mark.parametrize("f", [2, 4])
def test_big_image_rays_are_the_reference_subpixel_rays(f: int) -> None:
    """Pixel (r, c) of the size*f image looks along the reference's subpixel ray.

    The reference (voxnerf.render.subpixel_rays_from_img) keeps K of the small image and
    shoots rays at pixel coordinates -0.5 + 1/(2f) + k/f.
    """
    size, fov = 8, 60.0
    small, big = intrinsics(fov, size, size), intrinsics(fov, size * f, size * f)
    k = np.arange(size * f)
    cols, rows = np.meshgrid(k, k)
    sub = -0.5 + 1 / (2 * f) + k / f
    sub_cols, sub_rows = np.meshgrid(sub, sub)
    ours = np.stack([cols, rows, np.ones_like(cols)], -1).reshape(-1, 3) @ np.linalg.inv(big).T
    theirs = np.stack([sub_cols, sub_rows, np.ones_like(sub_cols)], -1).reshape(-1, 3) @ np.linalg.inv(small).T
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def _write_recipe(folder: Path, prior_table: str) -> Path:
    recipe = folder / "tiny.toml"
    recipe.write_text(
        f"""
name = "tiny"
seed = 0
steps = 2
lr = 0.05
output = "{(folder / 'runs').as_posix()}"
device = "cpu"
view_every = 2
checkpoint_every = 2

{prior_table}

[field]
name = "voxel"
grid_size = 16

[[losses]]
name = "emptiness"
weight = 10.0

[camera]
test_frames = 2
"""
    )
    return recipe


def _train(recipe: Path) -> Path:
    """A real two-step run (in process: the subprocess would import diffusers once more)."""
    summary = engine.run(load_recipe(recipe, load_registry()), stream=io.StringIO())
    assert summary.state == "finished"
    return summary.run_dir


def _check_videos(out_dir: Path, frames: int, height: int, width: int, fps: int = 20) -> None:
    import imageio.v3 as iio

    assert iio.immeta(out_dir / IMAGE_VIDEO)["fps"] == pytest.approx(fps)
    images = read_video_frames(out_dir / IMAGE_VIDEO)
    panes = read_video_frames(out_dir / DEPTH_VIDEO)
    assert len(images) == frames and len(panes) == frames
    assert all(frame.shape[:2] == (height, width) for frame in images)
    assert all(frame.shape[:2] == (height, 2 * width) for frame in panes)
    assert len(list((out_dir / "frames").glob("frame_*.png"))) == frames
    # the left half of the picture-and-depth video is the picture
    left = panes[frames // 2][:, :width].astype(float)
    assert np.abs(left - images[frames // 2].astype(float)).mean() < 12


def test_hd_render_of_a_latent_run(tmp_path: Path) -> None:
    """A run with a tiny Stable Diffusion: latents are rendered f x f, resized, then VAE-decoded."""
    model = build_sd_folder(tmp_path / "tiny-sd")
    recipe = _write_recipe(
        tmp_path,
        f'[prior]\nname = "stable-diffusion"\nmodel = "{model.as_posix()}"\nprompt = "a red cube"\nguidance_scale = 3.0',
    )
    run_dir = _train(recipe)
    # the typer app in process: a subprocess would spend most of its time importing diffusers again
    result = CliRunner().invoke(
        build_app(),
        ["render", str(run_dir), "--hd", "--frames", "5", "--subpixel", "2", "--resolution", "12", "--fps", "7"],
    )
    assert result.exit_code == 0, result.output
    out = result.output
    decoder_scale = 2  # the tiny VAE has two blocks: 12x12 latents decode to 24x24 pictures
    assert SD_LATENT_SIZE == 16  # the run renders 16x16 latents, so 32x32 subpixel renders are downsampled
    _check_videos(run_dir / "render" / "hd", 5, 12 * decoder_scale, 12 * decoder_scale, fps=7)
    assert "5 frames of 24x24" in out


def test_hd_render_of_a_pixel_run_with_an_out_folder(tmp_path: Path, run_sjc, sample_images: Path) -> None:
    """A pixel prior has nothing to decode: the picture is the resized render itself."""
    recipe = _write_recipe(
        tmp_path, f'[prior]\nname = "empirical"\nimages = "{sample_images.as_posix()}"\nresolution = 16'
    )
    run_dir = _train(recipe)
    out_dir = tmp_path / "hd-out"
    code, _, err = run_sjc(
        "render", str(run_dir), "--hd", "--frames", "3", "--resolution", "20",
        "--decode-batch", "2", "--out", str(out_dir),
    )
    assert code == 0, err
    _check_videos(out_dir, 3, 20, 20)


def test_hd_render_of_a_missing_run_is_a_user_error(tmp_path: Path, run_sjc) -> None:
    code, _, err = run_sjc("render", str(tmp_path / "nothing"), "--hd")
    assert code == 2
    assert "not a run folder" in err and "Traceback" not in err
