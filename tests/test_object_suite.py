"""The object suite (issue 15): its generator and the benchmark that measures fit and SJC on it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sjc_core.fit.datasets import load_posed_images

ROOT = Path(__file__).resolve().parents[1]
TRAIN, TEST, SIZE = 8, 4, 32


def _load_script(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def suite_module():
    return _load_script("make_object_suite")


@pytest.fixture(scope="module")
def suite(tmp_path_factory, suite_module) -> Path:
    out = tmp_path_factory.mktemp("suite")
    assert suite_module.main(["--out", str(out), "--views", str(TRAIN), "--test", str(TEST), "--size", str(SIZE)]) == 0
    return out


def _border(images: np.ndarray) -> np.ndarray:
    """The pixels of every picture's outer ring [M, 3]."""
    ring = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)
    return ring.reshape(-1, 3)


def test_at_least_six_objects(suite_module):
    assert len(suite_module.OBJECTS) >= 6
    backgrounds = {o.background for o in suite_module.OBJECTS.values()}
    assert (1.0, 1.0, 1.0) in backgrounds and any(max(b) < 0.1 for b in backgrounds)


def test_every_object_loads_with_its_views(suite, suite_module):
    for name in suite_module.OBJECTS:
        train = load_posed_images(suite / name, "train")
        test = load_posed_images(suite / name, "test")
        assert len(train) == TRAIN and len(test) == TEST
        assert train.images.shape == (TRAIN, SIZE, SIZE, 3) and test.images.shape == (TEST, SIZE, SIZE, 3)
        assert train.c2w.shape == (TRAIN, 4, 4) and test.c2w.shape == (TEST, 4, 4)
        radii = np.linalg.norm(np.concatenate([train.c2w, test.c2w])[:, :3, 3], axis=1)
        np.testing.assert_allclose(radii, 1.5, atol=1e-6)
        assert abs(train.fov_deg - 50.0) < 1e-6
        for split in ("train", "test"):
            assert (suite / name / f"transforms_{split}.json").exists()
    assert json.loads((suite / "suite.json").read_text())["train"] == TRAIN


def test_deterministic(suite, suite_module, tmp_path):
    suite_module.main(["--out", str(tmp_path), "--objects", "mug", "--views", str(TRAIN), "--test", str(TEST), "--size", str(SIZE)])
    for split in ("train", "test"):
        a = load_posed_images(suite / "mug", split)
        b = load_posed_images(tmp_path / "mug", split)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.c2w, b.c2w)


def test_objects_differ_from_each_other_and_from_the_demo(suite, suite_module):
    names = list(suite_module.OBJECTS)
    pictures = {n: load_posed_images(suite / n, "train").images for n in names}
    demo_dir = ROOT / "data" / "demo"
    if (demo_dir / "transforms_train.json").exists():
        demo = load_posed_images(demo_dir, "train", resolution=SIZE)
        pictures["demo"] = demo.images[:TRAIN]
    keys = list(pictures)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            mean_gap = np.abs(pictures[a].mean(axis=(0, 1, 2)) - pictures[b].mean(axis=(0, 1, 2))).max()
            # the demo's training cameras are the same seeded draw, so the views correspond one to one
            picture_gap = np.abs(pictures[a] - pictures[b]).mean()
            assert mean_gap > 0.02 or picture_gap > 0.05, (a, b, mean_gap, picture_gap)
            assert picture_gap > 0.03, (a, b, picture_gap)


def test_objects_fill_part_of_the_picture(suite, suite_module):
    for name, obj in suite_module.OBJECTS.items():
        images = load_posed_images(suite / name, "train").images
        foreground = (np.abs(images - np.asarray(obj.background)).max(axis=-1) > 0.05).mean()
        assert 0.03 < foreground < 0.6, (name, foreground)


def test_white_and_dark_backgrounds(suite, suite_module):
    by_background = {o.background: n for n, o in suite_module.OBJECTS.items()}
    white = load_posed_images(suite / by_background[(1.0, 1.0, 1.0)], "test").images
    dark = next(n for b, n in by_background.items() if max(b) < 0.1)
    dark_images = load_posed_images(suite / dark, "test").images
    assert np.median(_border(white), axis=0).min() > 0.98
    assert np.median(_border(dark_images), axis=0).max() < 0.1


def test_signpost_front_and_back_differ(suite_module):
    import torch

    from sjc_core.render.cameras import intrinsics, look_at
    from sjc_core.render.view import render_view

    field = suite_module.ObjectField(suite_module.OBJECTS["signpost"], step_size=0.01)
    k = intrinsics(50.0, SIZE, SIZE)
    with torch.no_grad():
        front, back = (
            render_view(field, k, look_at(np.array([x, 0.3, 0.0])), SIZE, SIZE).image.permute(1, 2, 0).numpy()
            for x in (-1.5, 1.5)
        )
    red_minus_blue = lambda im: float((im[..., 0] - im[..., 2]).mean())
    assert red_minus_blue(front) > 0.05 > -0.05 > red_minus_blue(back)
    assert np.abs(front - back).mean() > 0.05


def test_unknown_object_is_refused(suite_module, tmp_path):
    with pytest.raises(SystemExit):
        suite_module.main(["--out", str(tmp_path), "--objects", "teapot"])


def test_benchmark_end_to_end(suite, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "object_suite.py"), "--suite", str(suite), "--objects", "signpost",
         "--fit-steps", "3", "5", "--sjc-steps", "2", "4", "--threads", "1", "--out", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table, sep, blob = proc.stdout.partition("JSON:\n")
    assert sep, proc.stdout
    for column in ("fit best", "fit final", "sjc@2", "sjc@4", "mean pic", "nearest"):
        assert column in table
    assert "signpost" in table
    report = json.loads(blob)
    assert report["fit_steps"] == [3, 5] and report["sjc_steps"] == [2, 4]
    (row,) = report["objects"]
    assert row["object"] == "signpost" and row["train_views"] == TRAIN and row["test_views"] == TEST
    numbers = [row["fit"]["best_db"], row["fit"]["final_db"], *row["sjc"]["psnr_db_at"].values(),
               row["baseline"]["mean_picture_db"], row["baseline"]["nearest_view_db"]]
    assert set(row["sjc"]["psnr_db_at"]) == {"2", "4"}
    assert all(isinstance(x, float) and 5.0 < x < 60.0 for x in numbers), numbers
    assert row["fit"]["final_steps"] == 5 and row["fit"]["best_db"] >= row["fit"]["final_db"]
    assert (tmp_path / "runs" / "signpost" / "fit-5" / "metrics.json").exists()
