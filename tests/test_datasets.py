"""Posed-image loading (NeRF-synthetic layout): layouts, conversions and every bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from sjc_core.errors import SjcError
from sjc_core.fit.datasets import load_posed_images
from sjc_core.fit.poses import Z_UP_TO_Y_UP, camera_directions, cameras_missing_box, look_at_point
from sjc_core.fit.transforms import write_transforms
from sjc_core.render.cameras import look_at


def _picture(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)


def _scene(
    root: Path,
    *,
    split: str | None = "train",
    count: int = 3,
    size: tuple[int, int] = (8, 8),
    channels: int = 3,
    extension_in_json: bool = False,
    radius: float = 1.5,
) -> tuple[Path, list[np.ndarray], list[np.ndarray]]:
    """A folder with ``count`` pictures on a ring and their transforms file."""
    name = "transforms.json" if split is None else f"transforms_{split}.json"
    sub = split or "images"
    folder = _mkdir(root / sub)
    frames, pictures, poses = [], [], []
    for i in range(count):
        angle = 2 * math.pi * i / count
        pose = look_at(np.array([radius * math.sin(angle), 0.3, radius * math.cos(angle)]))
        picture = _picture(*size, channels=channels, seed=i)
        iio.imwrite(folder / f"r_{i}.png", picture)
        frames.append((f"./{sub}/r_{i}" + (".png" if extension_in_json else ""), pose))
        pictures.append(picture)
        poses.append(pose)
    write_transforms(root / name, 50.0, frames)
    return root / name, pictures, poses


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ---- layouts -------------------------------------------------------------------------


def test_train_split_round_trip(tmp_path):
    _, pictures, poses = _scene(tmp_path, count=3)
    data = load_posed_images(tmp_path)
    assert data.images.shape == (3, 8, 8, 3) and data.images.dtype == np.float32
    np.testing.assert_allclose(data.images[1], pictures[1] / 255.0, atol=1e-6)
    np.testing.assert_allclose(data.c2w, np.stack(poses), atol=1e-9)
    assert data.c2w.dtype == np.float64
    assert data.fov_deg == pytest.approx(50.0)
    assert data.names == ["train/r_0.png", "train/r_1.png", "train/r_2.png"]
    assert data.source.name == "transforms_train.json"
    directions, radii = data.camera_directions()
    np.testing.assert_allclose(radii, np.hypot(1.5, 0.3), rtol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=-1), 1.0)
    np.testing.assert_allclose(directions * radii[:, None], np.stack(poses)[:, :3, 3])


def test_generic_transforms_json_and_explicit_extension(tmp_path):
    _scene(tmp_path, split=None, count=2, extension_in_json=True)
    data = load_posed_images(tmp_path)  # train falls back to transforms.json
    assert len(data) == 2 and data.source.name == "transforms.json"
    with pytest.raises(SjcError, match="no transforms_test.json"):
        load_posed_images(tmp_path, split="test")


def test_specific_split_wins_over_generic(tmp_path):
    _scene(tmp_path, split=None, count=2)
    _scene(tmp_path, split="train", count=4)
    assert len(load_posed_images(tmp_path)) == 4
    _scene(tmp_path, split="test", count=1)
    assert load_posed_images(tmp_path, split="test").source.name == "transforms_test.json"


def test_rgba_is_composited_on_background(tmp_path):
    _, pictures, _ = _scene(tmp_path, count=2, channels=4)
    background = (0.2, 0.4, 0.6)
    data = load_posed_images(tmp_path, background=background)
    rgba = pictures[0] / 255.0
    expected = rgba[..., :3] * rgba[..., 3:] + np.array(background) * (1 - rgba[..., 3:])
    np.testing.assert_allclose(data.images[0], expected, atol=1e-6)


def test_grey_and_sixteen_bit_pictures(tmp_path):
    _mkdir(tmp_path / "train")
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    iio.imwrite(tmp_path / "train" / "a.png", grey)
    iio.imwrite(tmp_path / "train" / "b.png", deep)
    write_transforms(tmp_path / "transforms_train.json", 40.0, [("train/a", np.eye(4)), ("train/b.png", np.eye(4))])
    data = load_posed_images(tmp_path, box_half=None)
    np.testing.assert_allclose(data.images[0, ..., 1], grey / 255.0, atol=1e-6)
    np.testing.assert_allclose(data.images[1, ..., 2], deep / 65535.0, atol=1e-6)


def test_resize_keeps_field_of_view_and_averages(tmp_path):
    _mkdir(tmp_path / "train")
    checker = np.zeros((16, 32, 3), dtype=np.uint8)
    checker[::2, ::2] = 255
    checker[1::2, 1::2] = 255
    iio.imwrite(tmp_path / "train" / "c.png", checker)
    write_transforms(tmp_path / "transforms_train.json", 60.0, [("train/c", look_at(np.array([0, 0, 2.0])))])
    data = load_posed_images(tmp_path, resolution=8)
    assert data.images.shape == (1, 4, 8, 3)  # width 8, aspect kept
    assert data.fov_deg == pytest.approx(60.0)
    np.testing.assert_allclose(data.images, 0.5, atol=0.02)  # anti-aliased: the checker averages out
    k = data.intrinsics()
    assert k[0, 0] == pytest.approx(4 / math.tan(math.radians(30)))


def test_z_up_turns_blender_world_to_y_up(tmp_path):
    # a Blender camera on the +z axis (above the scene) looking down at the origin
    up_in_blender = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4.0], [0, 0, 0, 1]])
    _mkdir(tmp_path / "train")
    iio.imwrite(tmp_path / "train" / "a.png", _picture(4, 4))
    write_transforms(tmp_path / "transforms_train.json", 40.0, [("train/a", up_in_blender)])
    data = load_posed_images(tmp_path, z_up=True)
    np.testing.assert_allclose(data.c2w[0, :3, 3], [0.0, 4.0, 0.0], atol=1e-12)  # now above along +y
    np.testing.assert_allclose(data.c2w[0, :3, 2], [0.0, 1.0, 0.0], atol=1e-12)  # still looks down (-z axis)
    assert np.linalg.det(Z_UP_TO_Y_UP[:3, :3]) == pytest.approx(1.0)


def test_scale_and_center_bring_scene_into_box(tmp_path):
    _mkdir(tmp_path / "train")
    frames = []
    target = np.array([3.0, -1.0, 2.0])
    for i in range(4):
        angle = 2 * math.pi * i / 4 + 0.3
        eye = target + 4.0 * np.array([math.sin(angle), 0.5, math.cos(angle)])
        iio.imwrite(tmp_path / "train" / f"{i}.png", _picture(4, 4, seed=i))
        frames.append((f"train/{i}", look_at(eye, target=target)))
    write_transforms(tmp_path / "transforms_train.json", 40.0, frames)
    np.testing.assert_allclose(look_at_point(np.stack([p for _, p in frames])), target, atol=1e-9)
    data = load_posed_images(tmp_path, center=True, scale="auto", target_radius=1.5)
    _, radii = data.camera_directions()
    np.testing.assert_allclose(radii.mean(), 1.5, rtol=1e-9)
    np.testing.assert_allclose(data.offset, target, atol=1e-9)
    assert data.scale == pytest.approx(1.5 / (4.0 * math.sqrt(1.25)))
    # the same numbers applied to another load give the same poses
    again = load_posed_images(tmp_path, center=data.offset, scale=data.scale)
    np.testing.assert_allclose(again.c2w, data.c2w, atol=1e-12)
    np.testing.assert_allclose(data.c2w[:, :3, :3], np.stack([p for _, p in frames])[:, :3, :3])


def test_camera_seeing_nothing_of_the_box_is_a_warning(tmp_path):
    _mkdir(tmp_path / "train")
    away = look_at(np.array([0.0, 0.0, 3.0]), target=np.array([0.0, 0.0, 10.0]))  # faces away
    toward = look_at(np.array([0.0, 0.0, 3.0]))
    inside = look_at(np.array([0.2, 0.1, 0.5]), target=np.array([5.0, 0.0, 0.5]))  # in the box
    for i in range(3):
        iio.imwrite(tmp_path / "train" / f"{i}.png", _picture(4, 4, seed=i))
    write_transforms(tmp_path / "transforms_train.json", 40.0, [("train/0", away), ("train/1", toward), ("train/2", inside)])
    warnings: list[str] = []
    data = load_posed_images(tmp_path, warn=warnings.append)
    assert len(data) == 3
    assert len(warnings) == 1 and "1 camera(s)" in warnings[0] and "train/0.png" in warnings[0]
    assert cameras_missing_box(data.c2w, 40.0, 4, 4, 1.0) == [0]


def test_camera_directions_function():
    poses = np.stack([look_at(np.array([0.0, 2.0, 0.0])), look_at(np.array([3.0, 0.0, 0.0]))])
    directions, radii = camera_directions(poses)
    np.testing.assert_allclose(directions, [[0, 1, 0], [1, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(radii, [2.0, 3.0])


# ---- bad input: one SjcError line naming the file --------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(SjcError, match=r"nowhere: no such folder"):
        load_posed_images(tmp_path / "nowhere")


def test_folder_without_transforms(tmp_path):
    with pytest.raises(SjcError, match=r"no transforms_train.json or transforms.json"):
        load_posed_images(tmp_path)


def test_bad_json_names_line_and_column(tmp_path):
    (tmp_path / "transforms_train.json").write_text('{\n  "camera_angle_x": 0.5,\n  "frames": [,]\n}\n')
    with pytest.raises(SjcError) as info:
        load_posed_images(tmp_path)
    (line,) = info.value.problems
    assert "transforms_train.json: invalid JSON at line 3, column" in line


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("camera_angle_x"), r"missing key 'camera_angle_x'"),
        (lambda d: d.update(camera_angle_x="wide"), r"camera_angle_x must be a number"),
        (lambda d: d.update(camera_angle_x=4.0), r"camera_angle_x must be a number of radians in \(0, pi\)"),
        (lambda d: d.pop("frames"), r"missing key 'frames'"),
        (lambda d: d.update(frames={}), r"'frames' must be a list"),
        (lambda d: d.update(frames=[]), r"transforms_train.json: no frames"),
        (lambda d: d["frames"][1].pop("transform_matrix"), r"frames\[1\]: missing key 'transform_matrix'"),
        (lambda d: d["frames"][0].pop("file_path"), r"frames\[0\]: missing key 'file_path'"),
        (lambda d: d["frames"][0].update(file_path=3), r"frames\[0\].file_path: expected a non-empty string"),
        (lambda d: d["frames"][1].update(transform_matrix=[[1, 0, 0, 0]] * 3), r"frames\[1\].transform_matrix: expected a 4x4 matrix, got shape 3x4"),
        (lambda d: d["frames"][1].update(transform_matrix=[[1, 0], [0, 1, 2]]), r"frames\[1\].transform_matrix: expected a 4x4 matrix"),
        (lambda d: d["frames"][1]["transform_matrix"][3].__setitem__(0, 2.0), r"last row must be \[0, 0, 0, 1\]"),
        (lambda d: d["frames"][1]["transform_matrix"][0].__setitem__(0, None), r"frames\[1\].transform_matrix: .*NaN"),
        (lambda d: d.update(frames=["a"]), r"frames\[0\]: expected an object"),
    ],
)
def test_malformed_transforms(tmp_path, change, message):
    path, _, _ = _scene(tmp_path, count=2)
    _edit(path, change)
    with pytest.raises(SjcError, match=message) as info:
        load_posed_images(tmp_path)
    assert len(info.value.problems) == 1 and str(path) in info.value.problems[0]


def test_top_level_must_be_an_object(tmp_path):
    (tmp_path / "transforms.json").write_text("[1, 2]")
    with pytest.raises(SjcError, match=r"transforms.json: expected a JSON object"):
        load_posed_images(tmp_path)


def test_missing_image_names_it(tmp_path):
    _scene(tmp_path, count=3)
    (tmp_path / "train" / "r_2.png").unlink()
    with pytest.raises(SjcError, match=r"train/r_2: image not found \(frames\[2\].file_path in transforms_train.json\)"):
        load_posed_images(tmp_path)


def test_unreadable_image_names_it(tmp_path):
    _scene(tmp_path, count=2)
    (tmp_path / "train" / "r_1.png").write_bytes(b"not a png at all")
    with pytest.raises(SjcError, match=r"train/r_1.png: cannot read the picture") as info:
        load_posed_images(tmp_path)
    assert "\n" not in str(info.value)


def test_float_picture_with_nan_names_it(tmp_path):
    """A float TIFF holding NaN would reach the prior's data unchecked (clip keeps NaN)."""
    _scene(tmp_path, count=2)
    (tmp_path / "train" / "r_1.png").unlink()
    pixels = np.full((8, 8), 0.5, dtype=np.float32)
    pixels[3, 4] = np.nan
    iio.imwrite(tmp_path / "train" / "r_1.tif", pixels)
    with pytest.raises(SjcError, match=r"train/r_1.tif: the picture holds NaN or Inf values") as info:
        load_posed_images(tmp_path)
    assert "\n" not in str(info.value)
    pixels[3, 4] = 0.25
    iio.imwrite(tmp_path / "train" / "r_1.tif", pixels)  # the same float picture, finite, is read as grey
    data = load_posed_images(tmp_path)
    np.testing.assert_allclose(data.images[1][3, 4], [0.25] * 3)


def test_mixed_sizes_name_both_files_and_sizes(tmp_path):
    _scene(tmp_path, count=3)
    iio.imwrite(tmp_path / "train" / "r_2.png", _picture(8, 12))
    with pytest.raises(SjcError) as info:
        load_posed_images(tmp_path)
    (line,) = info.value.problems
    assert "r_2.png: image is 12x8 (WxH) but train/r_0.png is 8x8" in line


def test_bad_scale(tmp_path):
    _scene(tmp_path, count=2)
    with pytest.raises(SjcError, match="scale must be positive"):
        load_posed_images(tmp_path, scale=-1.0)


# ---- through the CLI: exit 2, one line, no traceback -----------------------------------


def _sjc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sjc_core", *args], capture_output=True, text=True, timeout=120)


def _assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("sjc: warning")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_missing_folder(tmp_path):
    result = _sjc("fit", str(tmp_path / "absent"), "--out", str(tmp_path / "out"))
    _assert_one_line_error(result, "absent: no such folder")
    assert not (tmp_path / "out").exists()


def test_cli_bad_json(tmp_path):
    (tmp_path / "transforms_train.json").write_text('{"camera_angle_x": 0.5, "frames": [}')
    result = _sjc("fit", str(tmp_path), "--out", str(tmp_path / "out"))
    _assert_one_line_error(result, "transforms_train.json: invalid JSON at line 1, column")


def test_cli_mixed_sizes_in_process(tmp_path, monkeypatch, capsys):
    """The console entry point in this process (one torch import fewer than a subprocess)."""
    from sjc_core import cli

    _scene(tmp_path, count=2)
    iio.imwrite(tmp_path / "train" / "r_1.png", _picture(6, 8))
    monkeypatch.setattr(sys, "argv", ["sjc", "fit", str(tmp_path), "--out", str(tmp_path / "out"), "--steps", "1"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    err = capsys.readouterr().err
    assert info.value.code == 2
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("sjc: warning")]
    assert len(lines) == 1 and "r_1.png: image is 8x6 (WxH) but train/r_0.png is 8x8" in lines[0], err
    assert not (tmp_path / "out").exists()
