"""The independently drawn objects (scripts/make_independent_suite.py): a sphere tracer that
shares no code with sjc's renderer, whose pictures sjc loads like any NeRF-synthetic set."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from sjc_core.fit.datasets import load_posed_images
from sjc_core.render.cameras import camera_angles

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def maker():
    spec = importlib.util.spec_from_file_location("make_independent_suite", ROOT / "scripts" / "make_independent_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_independent_suite", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def suite(tmp_path_factory, maker) -> Path:
    out = tmp_path_factory.mktemp("independent")
    assert maker.main(["--out", str(out), "--views", "6", "--test", "3", "--size", "32"]) == 0
    return out


def test_the_renderer_shares_no_code_with_sjc() -> None:
    text = (ROOT / "scripts" / "make_independent_suite.py").read_text(encoding="utf-8")
    assert "sjc_core" not in text and "sjc_plugins" not in text


def test_four_objects_load_with_their_backgrounds(suite: Path, maker) -> None:
    assert set(maker.OBJECTS) == {"vase", "lamp", "rock", "toy"}
    for name, obj in maker.OBJECTS.items():
        picture = iio.imread(suite / name / "train" / "r_0.png")
        if obj.background is None:  # RGBA on transparent: hard edges, alpha only 0 or 255
            assert picture.shape[-1] == 4 and set(np.unique(picture[..., 3])) == {0, 255}
        else:  # opaque: the backdrop's colour in the corners
            assert picture.shape[-1] == 3
            np.testing.assert_allclose(picture[0, 0] / 255, obj.background, atol=1 / 255)
        train = load_posed_images(suite / name, "train")
        test = load_posed_images(suite / name, "test")
        assert (len(train), len(test)) == (6, 3) and train.images.shape[1:] == (32, 32, 3)
        covered = np.mean(np.abs(train.images - train.images[:, :1, :1]).sum(-1) > 0.05)
        assert 0.05 < covered < 0.8  # the object fills part of the picture


def test_views_from_below_the_equator_for_the_toy(suite: Path, maker) -> None:
    data = load_posed_images(suite / "toy", "train")
    _, polar = camera_angles(data.c2w)
    assert (polar > 90).any()  # sjc's polar draw above 90 degrees: below the equator
    for name in ("vase", "rock"):
        _, polar = camera_angles(load_posed_images(suite / name, "train").c2w)
        assert (polar < 90).all()


def test_deterministic(suite: Path, maker, tmp_path: Path) -> None:
    maker.make_object(maker.OBJECTS["lamp"], tmp_path / "lamp", train=6, test=3, size=32)
    for split in ("train", "test"):
        assert (tmp_path / "lamp" / f"transforms_{split}.json").read_text() == (
            suite / "lamp" / f"transforms_{split}.json"
        ).read_text()
    np.testing.assert_array_equal(iio.imread(tmp_path / "lamp" / "train" / "r_2.png"), iio.imread(suite / "lamp" / "train" / "r_2.png"))


def test_its_rays_are_the_rays_sjc_renders(maker) -> None:
    """Both put pixel centres at +0.5: a held-out picture and sjc's render of its camera sample the same rays."""
    from sjc_core.render.cameras import intrinsics
    from sjc_core.render.rays import camera_rays

    size, fov_deg = 48, 50.0
    pose = maker.look_from(np.array([1.0, 0.7, 1.8]))
    _, sjc_dirs = camera_rays(intrinsics(fov_deg, size, size), pose, size, size, keep_float64=True)
    assert np.abs(sjc_dirs.numpy() - maker.pixel_rays(pose, size, fov_deg)).max() < 1e-12


def test_aliasing_oracle_scores_the_supersampled_truth(suite: Path, maker, monkeypatch) -> None:
    """benchmarks/aliasing_oracle.py: the whole-pixel average is further from the point-sampled
    pictures than the central half-pixel one; on a 2x2 lattice the two are the same rays."""
    spec = importlib.util.spec_from_file_location("aliasing_oracle", ROOT / "benchmarks" / "aliasing_oracle.py")
    oracle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oracle)
    scores = oracle.oracle("rock", suite)
    assert 15.0 < scores["pixel_average_db"] < scores["half_pixel_average_db"] < 60.0
    monkeypatch.setattr(oracle, "SUPERSAMPLE", 2)  # the two central rays of 2 are all of them
    two = oracle.oracle("rock", suite)
    assert two["pixel_average_db"] == two["half_pixel_average_db"]
