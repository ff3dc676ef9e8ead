"""Hostile inputs (issue 29): links inside sjc's folders, special and huge files, counts and
numbers past their limits, broken checkpoints, strings posing as numbers.

Every case must be exactly one ``error:`` line on stderr, exit code 2, no traceback, and no
byte changed outside the folder sjc owns (a user's file behind a link keeps its content).
Cases that would hang or fill memory without the fix run the real CLI in a subprocess with
a timeout; the others run it in this process (``cli.main``), which saves a torch import.
One tiny run (16x16 empirical prior, 12^3 voxels, 6 steps) is trained once and copied.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run_sjc_command
from sjc_core.files import locks
from sjc_core.files.pictures import write_image
from test_engine import write_recipe
from test_run_safety import cli  # sjc ARGS in this process: (exit code, stdout, stderr)

pytestmark = pytest.mark.skipif(locks.fcntl is None or not hasattr(os, "mkfifo"), reason="POSIX only")

USER_TEXT = b"the user's own words, which sjc must never touch\n"


# ----------------------------------------------------------------------------- helpers


def sjc(*args: object, timeout: float = 60, cwd: Path | None = None) -> tuple[int, str, str]:
    """The real CLI in a subprocess: a hang is a TimeoutExpired, not a stuck test run."""
    return run_sjc_command(*map(str, args), timeout=timeout, cwd=cwd)


def refused(result: tuple[int, str, str], *fragments: str) -> str:
    """Exit code 2, one error line holding every fragment, no traceback; the line."""
    code, _, stderr = result
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes under ``root`` (not following links): to prove nothing changed."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if not path.is_symlink():
                found[str(path.relative_to(root))] = path.read_bytes()
    return found


@pytest.fixture
def user(tmp_path: Path) -> Iterator[Path]:
    """A folder of the user's own, with a file; checked unchanged after the test."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "notes.txt").write_bytes(USER_TEXT)
    before = snapshot(folder)
    yield folder
    assert snapshot(folder) == before, "a file outside sjc's folder changed"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run (6 steps, a checkpoint every 2)."""
    base = tmp_path_factory.mktemp("trained")
    recipe = write_recipe(base)
    code, _, stderr = sjc("run", recipe, "--run-dir", base / "run", timeout=300)
    assert code == 0, stderr
    return base / "run"


@pytest.fixture
def run_dir(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run for one test to abuse."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy, symlinks=True)
    return copy


def tiny_recipe(tmp_path: Path, replace: dict[str, str] | None = None) -> Path:
    """The tiny run's recipe with some lines changed (``old -> new``), in its own folder."""
    recipe = write_recipe(tmp_path / "recipe")
    text = recipe.read_text()
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    recipe.write_text(text)
    return recipe


def posed_set(folder: Path, frames: int, size: int = 8) -> Path:
    """A posed set whose ``frames`` entries all name one small picture."""
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / "r.png", np.full((size, size, 3), 128, np.uint8))
    pose = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2.5], [0, 0, 0, 1]]
    (folder / "transforms_train.json").write_text(
        json.dumps({"camera_angle_x": 0.7, "frames": [{"file_path": "r.png", "transform_matrix": pose}] * frames})
    )
    return folder


# ----------------------------------------------------------------------------- 1. links inside sjc's folders


def test_a_lock_file_linked_to_a_users_file_is_refused_and_the_file_kept(run_dir, user, monkeypatch, capsys) -> None:
    (run_dir / locks.LOCK_NAME).unlink(missing_ok=True)
    (run_dir / locks.LOCK_NAME).symlink_to(user / "notes.txt")
    refused(cli(monkeypatch, capsys, "render", run_dir, "--frames", "2"), f"{run_dir / locks.LOCK_NAME}", "symbolic link")
    assert not (run_dir / "render").exists()


def test_a_lock_file_hard_linked_to_a_users_file_is_refused(run_dir, user, monkeypatch, capsys) -> None:
    (run_dir / locks.LOCK_NAME).unlink(missing_ok=True)
    os.link(user / "notes.txt", run_dir / locks.LOCK_NAME)
    refused(cli(monkeypatch, capsys, "render", run_dir, "--frames", "2"), "hard link")


def test_render_into_a_linked_subfolder_is_refused(run_dir, user, monkeypatch, capsys) -> None:
    (run_dir / "render").symlink_to(user, target_is_directory=True)
    refused(cli(monkeypatch, capsys, "render", run_dir, "--frames", "2"), f"{run_dir / 'render'}", "symbolic link")
    assert sorted(os.listdir(user)) == ["notes.txt"]


def test_render_out_through_a_linked_subfolder_is_refused(run_dir, user, monkeypatch, capsys) -> None:
    (run_dir / "extra").symlink_to(user, target_is_directory=True)
    out = run_dir / "extra" / "video.mp4"
    refused(cli(monkeypatch, capsys, "render", run_dir, "--frames", "2", "--out", out), "symbolic link")
    assert sorted(os.listdir(user)) == ["notes.txt"]


def test_export_mesh_into_a_linked_subfolder_is_refused(run_dir, user, monkeypatch, capsys) -> None:
    (run_dir / "mesh").symlink_to(user, target_is_directory=True)
    refused(cli(monkeypatch, capsys, "export-mesh", run_dir), f"{run_dir / 'mesh'}", "symbolic link")
    assert sorted(os.listdir(user)) == ["notes.txt"]


def test_resume_with_linked_metrics_is_refused(trained, run_dir, user, monkeypatch, capsys) -> None:
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "metrics.jsonl").symlink_to(user / "notes.txt")
    recipe = trained.parent / "tiny.toml"
    refused(cli(monkeypatch, capsys, "run", recipe, "--run-dir", run_dir, "--resume"), "metrics.jsonl", "symbolic link")


def test_tensorboard_folder_linked_out_of_a_run_or_fit_folder_is_refused(trained, run_dir, user, tmp_path,
                                                                          monkeypatch, capsys) -> None:
    """TensorBoard's writer does not go through files/atomic: its folder is checked with the others."""
    (run_dir / "tensorboard").symlink_to(user, target_is_directory=True)
    recipe = trained.parent / "tiny.toml"
    refused(cli(monkeypatch, capsys, "run", recipe, "--run-dir", run_dir, "--resume", "--tensorboard"),
            f"{run_dir / 'tensorboard'}", "symbolic link")
    out = tmp_path / "fit-out"
    out.mkdir()
    (out / "tensorboard").symlink_to(user, target_is_directory=True)
    data = posed_set(tmp_path / "data", 4)
    refused(cli(monkeypatch, capsys, "fit", data, "--out", out, "--tensorboard", "--steps", "2"),
            f"{out / 'tensorboard'}", "symbolic link")
    assert sorted(os.listdir(user)) == ["notes.txt"]


def test_a_write_through_a_link_inside_a_held_folder_is_refused(tmp_path, user) -> None:
    from sjc_core.files import atomic
    from sjc_core.files.atomic import LinkRefused

    root = tmp_path / "held"
    root.mkdir()
    (root / "sub").symlink_to(user, target_is_directory=True)
    (root / "file.txt").symlink_to(user / "notes.txt")
    with locks.folder_lock(root, "test"):
        for path in (root / "sub" / "x.txt", root / "file.txt"):
            with pytest.raises(LinkRefused):
                atomic.write_text(path, "x")
        with pytest.raises(LinkRefused):
            atomic.append_jsonl(root / "file.txt", {"step": 1})
    atomic.write_text(tmp_path / "free.txt", "outside a held folder, links are the user's business")


def test_fit_into_a_folder_with_a_linked_heldout_is_refused(tmp_path, user, monkeypatch, capsys) -> None:
    data = posed_set(tmp_path / "data", 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "heldout").symlink_to(user, target_is_directory=True)
    result = cli(monkeypatch, capsys, "fit", data, "--out", out, "--steps", "1", "--video-frames", "0")
    refused(result, f"{out / 'heldout'}", "symbolic link")
    assert sorted(os.listdir(out)) == ["heldout"]


def test_batch_refuses_a_folder_that_is_not_a_batch_folder(tmp_path, monkeypatch, capsys) -> None:
    recipe = tiny_recipe(tmp_path)
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_bytes(b"<html>the user's home page</html>")
    (out / "batch.json").write_bytes(b'{"mine": true}')
    before = snapshot(out)
    result = cli(monkeypatch, capsys, "batch", recipe, "--no-ray", "--out", out)
    refused(result, f"{out}", "is not a batch folder", "index.html")
    assert snapshot(out) == before and sorted(os.listdir(out)) == ["batch.json", "index.html"]


def test_batch_refuses_a_linked_log_folder(tmp_path, user, monkeypatch, capsys) -> None:
    recipe = tiny_recipe(tmp_path)
    out = tmp_path / "batch"
    out.mkdir()
    (out / "logs").symlink_to(user, target_is_directory=True)
    refused(cli(monkeypatch, capsys, "batch", recipe, "--no-ray", "--out", out), f"{out / 'logs'}", "symbolic link")
    assert sorted(os.listdir(out)) == ["logs"]


# ----------------------------------------------------------------------------- 2. special and huge input files


def test_a_fifo_as_the_recipe_is_refused_at_once(tmp_path) -> None:
    fifo = tmp_path / "recipe.toml"
    os.mkfifo(fifo)
    refused(sjc("validate", fifo, timeout=60), f"{fifo}", "FIFO")


def test_dev_zero_linked_as_the_recipe_is_refused(tmp_path) -> None:
    link = tmp_path / "recipe.toml"
    link.symlink_to("/dev/zero")
    refused(sjc("validate", link, timeout=60), f"{link}", "device")


def test_an_oversized_recipe_is_refused(tmp_path, monkeypatch, capsys) -> None:
    recipe = tmp_path / "big.toml"
    with open(recipe, "wb") as handle:
        handle.write(b"# padding\n" * (1 << 20))  # 10 MiB of comments
    refused(cli(monkeypatch, capsys, "validate", recipe), f"{recipe}", "at most")


def test_a_fifo_as_the_transforms_file_is_refused(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.mkfifo(data / "transforms_train.json")
    # the CLI does not take a FIFO for a transforms file...
    refused(sjc("fit", data, "--out", tmp_path / "out", "--steps", "1", timeout=60), f"{data}")
    assert not (tmp_path / "out").exists()
    # ...and the reader itself refuses one at once instead of blocking in open()
    code = f"from pathlib import Path; from sjc_core.fit.transforms import read_transforms; " \
           f"read_transforms(Path({str(data / 'transforms_train.json')!r}))"
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert process.returncode != 0 and "FIFO" in process.stderr.splitlines()[-1], process.stderr


def test_a_fifo_as_a_picture_is_refused(tmp_path) -> None:
    data = posed_set(tmp_path / "data", 3)
    (data / "r.png").unlink()
    os.mkfifo(data / "r.png")
    # a FIFO is no picture file: the frame's picture is not found (and nothing opens the FIFO)
    refused(sjc("fit", data, "--out", tmp_path / "out", "--steps", "1", timeout=60), "r.png")
    from sjc_core.errors import SjcError
    from sjc_core.files.pixels import read_pixels

    with pytest.raises(SjcError, match="FIFO"):
        read_pixels(data / "r.png")


# ----------------------------------------------------------------------------- 3. counts and numbers on the command line


def test_render_frames_past_the_recipe_limit_is_refused_before_work(run_dir) -> None:
    refused(sjc("render", run_dir, "--frames", "1000000000", timeout=60), "--frames", "10,000")
    assert not (run_dir / "render").exists()


def test_render_fps_past_the_recipe_limit_is_refused(run_dir, monkeypatch, capsys) -> None:
    refused(cli(monkeypatch, capsys, "render", run_dir, "--frames", "2", "--fps", "100000"), "--fps", "1,000")


@pytest.mark.parametrize(
    ("flag", "value", "fragment"),
    [
        ("--video-frames", "1000000000", "10,000"),
        ("--steps", "100000000", "10,000,000"),
        ("--seed", str(2**64), "--seed"),
        ("--near", "nan", "finite"),
        ("--scale", "inf", "finite"),
        ("--lr", "inf", "finite"),
        ("--sparsity", "nan", "finite"),
    ],
)
def test_fit_flags_past_their_limits_are_refused_before_work(tmp_path, flag, value, fragment) -> None:
    data = posed_set(tmp_path / "data", 3)
    result = sjc("fit", data, "--out", tmp_path / "out", "--steps", "1", flag, value, timeout=60)
    line = refused(result, flag, fragment)
    assert "field." not in line  # the flag the user gave, not a key they never set
    assert not (tmp_path / "out").exists()


def test_batch_resources_must_be_finite(tmp_path, monkeypatch, capsys) -> None:
    recipe = tiny_recipe(tmp_path)
    result = cli(monkeypatch, capsys, "batch", recipe, "--no-ray", "--out", tmp_path / "b", "--cpus-per-run", "nan")
    refused(result, "--cpus-per-run")
    assert not (tmp_path / "b").exists()


def test_a_5000_digit_set_value_is_refused_like_in_a_file(tmp_path, monkeypatch, capsys) -> None:
    recipe = tiny_recipe(tmp_path)
    refused(cli(monkeypatch, capsys, "validate", recipe, "--set", "steps=" + "9" * 5000), "--set", "4300 digits")
    in_file = tiny_recipe(tmp_path / "b", {"steps = 6": "steps = " + "9" * 5000})
    refused(cli(monkeypatch, capsys, "validate", in_file), "4300 digits")


# ----------------------------------------------------------------------------- 4. datasets against memory


def test_a_posed_set_too_large_for_memory_is_refused_in_validate_and_run(tmp_path, monkeypatch, capsys) -> None:
    data = posed_set(tmp_path / "recipe" / "posed", 20_000, size=256)  # 20,000 x 256 x 256 x 3 floats: 15.7 GB
    recipe = tiny_recipe(tmp_path, {'images = "images"': 'images = "posed"'})
    line = refused(cli(monkeypatch, capsys, "validate", recipe), "prior.images", "20,000 frames", "at most")
    assert "GB" in line
    run = tmp_path / "runs"
    refused(cli(monkeypatch, capsys, "run", recipe, "--run-dir", run), "20,000 frames", "at most")
    assert not run.exists()
    assert data.is_dir()


# ----------------------------------------------------------------------------- 5. checkpoints with NaN or Inf


def poison(run_dir: Path) -> Path:
    """Put an Inf into the run's checkpoint (metadata kept)."""
    path = run_dir / "checkpoints" / "last.safetensors"
    tensors = load_file(str(path))
    from sjc_core.runs.checkpoint import _read_header

    meta = _read_header(path)
    name = next(k for k, v in tensors.items() if k.startswith("field.") and v.is_floating_point())
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("inf")
    save_file(tensors, str(path), metadata=meta)
    return path


def test_render_of_a_checkpoint_with_inf_is_refused(run_dir, monkeypatch, capsys) -> None:
    checkpoint = poison(run_dir)
    refused(cli(monkeypatch, capsys, "render", run_dir, "--frames", "2"), f"{checkpoint}", "NaN or Inf")
    assert not (run_dir / "render").exists()


def test_export_mesh_of_a_checkpoint_with_inf_is_refused(run_dir, monkeypatch, capsys) -> None:
    checkpoint = poison(run_dir)
    refused(cli(monkeypatch, capsys, "export-mesh", run_dir), f"{checkpoint}", "NaN or Inf")
    assert not (run_dir / "mesh").exists()


def test_resume_from_a_checkpoint_with_inf_is_refused(trained, run_dir, monkeypatch, capsys) -> None:
    checkpoint = poison(run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    status["state"] = "interrupted"
    (run_dir / "status.json").write_text(json.dumps(status))
    recipe = trained.parent / "tiny.toml"
    before = snapshot(run_dir)
    line = refused(cli(monkeypatch, capsys, "run", recipe, "--run-dir", run_dir, "--resume"), f"{checkpoint}", "NaN or Inf")
    assert "cannot resume" in line and "last good" not in line
    after = snapshot(run_dir)
    after.pop(locks.LOCK_NAME, None), before.pop(locks.LOCK_NAME, None)
    assert after == before


# ----------------------------------------------------------------------------- 6. strict types


@pytest.mark.parametrize(("old", "new", "key"), [("steps = 6", 'steps = "12"', "steps"),
                                                  ("grid_size = 12", 'grid_size = "32"', "field.grid_size"),
                                                  ("lr = 0.05", 'lr = "0.05"', "lr")])
def test_a_quoted_number_is_not_a_number(tmp_path, monkeypatch, capsys, old, new, key) -> None:
    recipe = tiny_recipe(tmp_path, {old: new})
    refused(cli(monkeypatch, capsys, "validate", recipe), f"{key}: ", "not a string")


def test_set_numbers_still_become_numbers(tmp_path, monkeypatch, capsys) -> None:
    import tomllib

    recipe = tiny_recipe(tmp_path)
    code, out, err = cli(monkeypatch, capsys, "validate", recipe, "--set", "steps=12", "--set", "field.grid_size=16",
                         "--set", "name=2024", "--set", "lr=0.5")
    assert code == 0, err
    data = tomllib.loads(out)
    assert data["steps"] == 12 and data["field"]["grid_size"] == 16 and data["name"] == "2024" and data["lr"] == 0.5
    refused(cli(monkeypatch, capsys, "validate", recipe, "--set", 'steps="12"'), "steps", "not a string")


# ----------------------------------------------------------------------------- 7. smaller ones


def test_a_byte_order_mark_is_named(tmp_path, monkeypatch, capsys) -> None:
    recipe = tiny_recipe(tmp_path)
    recipe.write_bytes(b"\xef\xbb\xbf" + recipe.read_bytes())
    refused(cli(monkeypatch, capsys, "validate", recipe), f"{recipe}", "byte order mark")


def test_the_automatic_mesh_threshold_falls_back_below_a_young_fields_maximum(monkeypatch) -> None:
    from sjc_core.mesh import extract

    class YoungField:
        """A soft ball whose densest voxel (1.0) lies below ln 2 / voxel and the probed level."""

        aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
        step_size = 0.01

        def density_volume(self) -> tuple[torch.Tensor, torch.Tensor]:
            axis = torch.linspace(-1, 1, 16)
            z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
            return (1.0 - (x**2 + y**2 + z**2).sqrt()).clamp(min=0)[None], self.aabb

    monkeypatch.setattr(extract, "surface_threshold", lambda *args, **kwargs: 5.0)
    result = extract.extract_mesh(YoungField())
    assert 0 < result.threshold < 1.0 and len(result.faces) > 0


def test_a_cut_off_metrics_line_is_restored_on_resume(trained, run_dir, monkeypatch, capsys) -> None:
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines(keepends=True)
    assert len(lines) == 6
    metrics.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # step 6 cut off mid-write
    recipe = trained.parent / "tiny.toml"
    code, _, err = cli(monkeypatch, capsys, "run", recipe, "--run-dir", run_dir, "--resume")
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert json.loads(metrics.read_text().splitlines()[-1]) == json.loads(lines[-1])
