"""`sjc fit` end to end on a small procedural scene made by the demo generator."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sjc_core.fit.datasets import load_posed_images

ROOT = Path(__file__).resolve().parents[1]


def _demo_module():
    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "scripts" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules.setdefault("make_demo_data", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory) -> Path:
    """24 training views and 4 held-out views of the snowman at 32x32 (a few seconds)."""
    demo = _demo_module()
    out = tmp_path_factory.mktemp("snowman")
    demo.make_demo(out, demo.DemoSpec(train=24, test=4, size=32, subpixel=1, step_size=0.01))
    return out


def _sjc(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sjc_core", *args], capture_output=True, text=True, timeout=timeout)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return -10.0 * math.log10(float(np.mean((a - b) ** 2)))


def test_generator_is_deterministic_and_loadable(small_scene, tmp_path):
    demo = _demo_module()
    again = tmp_path / "again"
    demo.make_demo(again, demo.DemoSpec(train=2, test=1, size=32, subpixel=1, step_size=0.01))
    first = load_posed_images(small_scene)
    second = load_posed_images(again)
    np.testing.assert_array_equal(first.images[:2], second.images)  # same seed, same pictures
    np.testing.assert_allclose(first.c2w[:2], second.c2w)
    assert first.images.shape == (24, 32, 32, 3) and first.fov_deg == pytest.approx(50.0)
    _, radii = first.camera_directions()
    np.testing.assert_allclose(radii, 1.5, rtol=1e-9)
    # mid-grey background at the corners, a colourful object in the middle
    corners = first.images[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    np.testing.assert_allclose(corners, 0.5, atol=2 / 255)
    centre = first.images[:, 12:20, 12:20]
    assert np.abs(centre - 0.5).max(axis=-1).mean() > 0.2
    assert len(load_posed_images(small_scene, "test")) == 4


def test_snowman_has_a_front():
    """The carrot nose is seen from -x (the sampler's front view) and hidden from +x.

    (From behind, a pixel or two where the red hat meets its yellow band can look orange.)
    """
    from sjc_core.render.cameras import look_at

    demo = _demo_module()
    spec = demo.DemoSpec(size=32, subpixel=1, step_size=0.01)
    front, back = demo.render_pictures(
        demo.SnowmanField(step_size=spec.step_size),
        [look_at(np.array([-1.5, 0.3, 0.0])), look_at(np.array([1.5, 0.3, 0.0]))],
        spec,
    )

    def orange(picture: np.ndarray) -> int:
        r, g, b = (picture.astype(float) / 255).transpose(2, 0, 1)
        return int(np.sum((r > 0.6) & (g > 0.15) & (g < 0.6 * r) & (b < 0.25)))

    assert orange(front) >= 8 and orange(front) >= 4 * orange(back), (orange(front), orange(back))


def test_fit_beats_mean_colour_by_far(small_scene, tmp_path):
    out = tmp_path / "fit"
    result = _sjc(
        "fit", str(small_scene), "--out", str(out), "--steps", "150", "--grid-size", "32",
        "--batch-rays", "2048", "--video-frames", "6", "--lr", "0.1", "--sparsity", "1e-3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())

    # Floors, computed here from the pictures alone: every held-out pixel predicted as the
    # training pictures' mean colour (about 17.0 dB), or as the grey backdrop, which is
    # what a field that learnt only the background would show (lower still). Beating both
    # by 7 dB means the object's shape and colours were recovered from the posed views;
    # this run measures about 27.3 dB (seeds 0 and 1 agree within 0.1 dB), so the bar
    # leaves 3 dB of room. A short, sparse run like this one wants the stronger sparsity
    # term (1e-3; with the default 3e-4 it reaches about 25 dB).
    train = load_posed_images(small_scene)
    test = load_posed_images(small_scene, "test")
    baseline = _psnr(test.images, train.images.reshape(-1, 3).mean(axis=0))
    backdrop = _psnr(test.images, np.full(3, 0.5))
    assert metrics["baseline_psnr_mean_colour"] == pytest.approx(baseline, abs=1e-3)
    assert metrics["heldout_source"] == "transforms_test.json" and metrics["heldout_views"] == 4
    assert metrics["psnr_heldout"] > max(baseline, backdrop) + 7.0, (metrics["psnr_heldout"], baseline, backdrop)
    assert metrics["psnr_train"] >= metrics["psnr_heldout"] - 1.0
    assert len(metrics["psnr_heldout_views"]) == 4

    renders = sorted((out / "heldout").glob("*.png"))
    assert len(renders) == 4
    video = out / metrics["video"]
    assert video.exists() and video.stat().st_size > 0
    assert (out / "field.safetensors").exists()
    log_lines = (out / "train_log.jsonl").read_text().splitlines()
    assert json.loads(log_lines[-1])["step"] == 150
    assert "held-out PSNR" in result.stdout


def test_checkpoint_restores_the_field(small_scene, tmp_path):
    import torch

    from sjc_core.runs.checkpoint import load_checkpoint

    out = tmp_path / "fit"
    result = _sjc(
        "fit", str(small_scene), "--out", str(out), "--steps", "2", "--grid-size", "16",
        "--video-frames", "0", "--holdout", "3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["heldout_views"] == 3 and metrics["train_views"] == 21
    assert "video" not in metrics
    snapshot = load_checkpoint(out / "field.safetensors")
    options = dict(snapshot.extra["field"])
    assert options.pop("name") == "voxel" and options["grid_size"] == 16
    assert options["init_features"] == 0.0  # fit's photometric default is recorded
    # the recorded options rebuild the same field through the registry, and the state loads
    from sjc_core.contracts import BuildContext
    from sjc_core.plugins import load_registry

    info = load_registry().get("fields", "voxel")
    field = info.factory(info.options.model_validate(options), BuildContext(channels=3, value_range=(-1.0, 1.0)))
    field.load_state_dict(snapshot.field_state, strict=True)
    assert all(torch.equal(field.state_dict()[k], v) for k, v in snapshot.field_state.items())
    assert any(v.numel() >= 16**3 for v in snapshot.field_state.values())


def _run_cli_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The console entry point in this process (saves a torch import per case)."""
    from sjc_core import cli

    monkeypatch.setattr(sys, "argv", ["sjc", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "field.no_such_option=1"], "field.no_such_option: unknown key"),
        (["--holdout", "24"], "--holdout 24: the data has only 24 training pictures"),
        (["--scale", "big"], "--scale: expected a positive number or 'auto'"),
    ],
)
def test_bad_options_are_one_line(small_scene, tmp_path, monkeypatch, capsys, args, fragment):
    code, _, err = _run_cli_in_process(
        monkeypatch, capsys, "fit", str(small_scene), "--out", str(tmp_path / "out"), "--steps", "1", *args
    )
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("sjc: warning")]
    assert len(lines) == 1 and fragment in lines[0], err
    assert not (tmp_path / "out").exists()


def _tiny_fit(monkeypatch, capsys, scene: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return _run_cli_in_process(
        monkeypatch, capsys, "fit", str(scene), "--out", str(out), "--steps", "2", "--grid-size", "12",
        "--video-frames", "0", "--batch-rays", "256", *extra,
    )


def test_an_earlier_fit_is_kept_unless_overwrite(small_scene, tmp_path, monkeypatch, capsys):
    out = tmp_path / "fit"
    code, _, err = _tiny_fit(monkeypatch, capsys, small_scene, out, "--steps", "3")
    assert code == 0, err
    first = (out / "metrics.json").read_bytes()
    (out / "heldout" / "999_stale.png").write_bytes(b"an earlier data set's picture")
    (out / "my-notes.txt").write_text("mine")

    code, _, err = _tiny_fit(monkeypatch, capsys, small_scene, out)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert f"{out}: already holds a fit (3 steps, held-out PSNR" in lines[0] and "--overwrite" in lines[0]
    assert (out / "metrics.json").read_bytes() == first  # nothing replaced

    code, _, err = _tiny_fit(monkeypatch, capsys, small_scene, out, "--overwrite")
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    assert not (out / "heldout" / "999_stale.png").exists() and len(list((out / "heldout").glob("*.png"))) == 4
    assert (out / "my-notes.txt").read_text() == "mine"  # only the fit's own files are replaced
    assert not [p for p in out.rglob(".sjc-tmp.*")]


def test_fit_refuses_other_folders_files_and_busy_folders(small_scene, tmp_path, monkeypatch, capsys):
    from sjc_core.files import locks

    def one_error(err: str) -> str:
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        return lines[0]

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "data.csv").write_text("1,2")
    for extra in ([], ["--overwrite"]):  # --overwrite replaces a fit, never other files
        code, _, err = _tiny_fit(monkeypatch, capsys, small_scene, theirs, *extra)
        assert code == 2 and f"{theirs}: exists, is not empty and is not a fit folder (it holds data.csv)" in one_error(err)
    assert [p.name for p in theirs.iterdir()] == ["data.csv"]

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    code, _, err = _tiny_fit(monkeypatch, capsys, small_scene, a_file)
    assert code == 2 and f"{a_file}: is a file, not a folder" in one_error(err)
    code, _, err = _tiny_fit(monkeypatch, capsys, small_scene, a_file / "fit")
    assert code == 2 and f"{a_file}: is a file, not a folder, so {a_file / 'fit'} cannot be created" in one_error(err)

    busy = tmp_path / "busy"
    busy.mkdir()
    with locks.folder_lock(busy, "sjc fit"):
        code, _, err = _tiny_fit(monkeypatch, capsys, small_scene, busy)
    assert code == 2 and f"{busy}: in use by another sjc process (pid {os.getpid()}, sjc fit)" in one_error(err)
    code, _, err = _tiny_fit(monkeypatch, capsys, small_scene, busy)  # free again
    assert code == 0, err


def test_fit_full_disk_is_one_line(small_scene, tmp_path, monkeypatch, capsys):
    import errno

    replace = os.replace

    def disk_full_for_pictures(src, dst):
        if str(dst).endswith(".png"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", disk_full_for_pictures)
    out = tmp_path / "fit"
    code, _, err = _tiny_fit(monkeypatch, capsys, small_scene, out)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: {out / 'heldout'}/") and lines[0].endswith("cannot write (No space left on device)")
    assert not [p for p in out.rglob(".sjc-tmp.*")]


def test_held_out_psnr_is_shown_logged_and_its_best_point_kept(small_scene, tmp_path, monkeypatch, capsys):
    """Issue 15: the fit prints the held-out PSNR as it goes; the curve and its best point
    are in metrics.json, each evaluation in train_log.jsonl."""
    out = tmp_path / "fit"
    code, _, err = _tiny_fit(monkeypatch, capsys, small_scene, out, "--steps", "30", "--eval-every", "10")
    assert code == 0, err
    assert "held-out" in err and "best" in err
    metrics = json.loads((out / "metrics.json").read_text())
    curve = metrics["psnr_heldout_curve"]
    assert [step for step, _ in curve] == [10, 20, 30]
    assert metrics["psnr_heldout_best"] == max(value for _, value in curve)
    assert metrics["psnr_heldout_best_step"] in (10, 20, 30)
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "psnr_heldout" in r] == [10, 20, 30]
    # the last point of the curve is the final model, measured like the final figure
    assert abs(curve[-1][1] - metrics["psnr_heldout"]) < 1e-3
