"""End-to-end checks of the chaining engine through the real CLI and plugins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import interrupt_after_logged_steps
from sjc_core.files.pictures import read_video_frames, write_image
from sjc_core.plugins import load_registry
from sjc_core.recipes.recipe import load_recipe
from sjc_core.runs import engine
from sjc_core.runs.checkpoint import load_checkpoint

STEPS = 6


def make_images(folder: Path, count: int = 5, size: int = 16) -> Path:
    """A few distinct colour images: enough for the empirical prior to have a target."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        base = rng.uniform(0, 1, size=3)
        yy, xx = np.mgrid[0:size, 0:size] / size
        image = np.clip(base[None, None, :] * (0.5 + 0.5 * np.stack([xx, yy, 1 - xx], -1)), 0, 1)
        write_image(folder / f"img_{index}.png", (image * 255).astype(np.uint8))
    return folder


def write_recipe(tmp_path: Path, steps: int = STEPS, extra: str = "", top: str = "") -> Path:
    images = make_images(tmp_path / "images")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        f"""
name = "tiny"
seed = 3
steps = {steps}
lr = 0.05
{top}
output = "{(tmp_path / 'runs').as_posix()}"
device = "cpu"
view_every = 2
checkpoint_every = 2

[prior]
name = "empirical"
images = "{images.name}"  # relative to the recipe: resume must still find it
resolution = 16

[field]
name = "voxel"
grid_size = 12

[[losses]]
name = "emptiness"
weight = 10.0

[[losses]]
name = "center-depth"
weight = 1.0

[camera]
test_frames = 4
{extra}
"""
    )
    return recipe


def sjc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sjc_core", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def field_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.safetensors").field_state


def test_cli_run_writes_every_artifact(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    result = sjc("run", str(recipe))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "tiny-seed3"
    assert "Traceback" not in result.stderr

    resolved = load_recipe(run_dir / "recipe.toml", load_registry())
    assert resolved.settings.steps == STEPS and resolved.prior.info.name == "empirical"

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for record in records:
        assert set(record["terms"]) == {"emptiness", "center-depth", "paas"}
        assert record["sigma"] > 0 and record["view"] in {"front", "side", "back", "overhead"}
        assert set(record["seconds"]) == {"render", "prior", "backward", "optimizer"}

    views = sorted(p.name for p in (run_dir / "views").glob("*.png"))
    assert views == [f"step_{s:06d}.png" for s in (2, 4, 6)]

    snapshot = load_checkpoint(run_dir / "checkpoints" / "last.safetensors")
    assert snapshot.step == STEPS and snapshot.optimizer_state is not None
    assert snapshot.numpy_state is not None and snapshot.torch_state is not None

    frames = read_video_frames(run_dir / "final" / "turntable.mp4")
    assert len(frames) == 4
    assert (run_dir / "final" / "turntable_strip.png").exists()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == STEPS

    # The same recipe and seed give the same field (CPU determinism).
    again = sjc("run", str(recipe), "--run-dir", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    first, second = field_tensors(run_dir), field_tensors(tmp_path / "again")
    assert all(torch.equal(first[k], second[k]) for k in first)

    # A second run into the same folder is refused, and nothing there changes.
    before = (run_dir / "checkpoints" / "last.safetensors").read_bytes()
    refused = sjc("run", str(recipe))
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert (run_dir / "checkpoints" / "last.safetensors").read_bytes() == before

    # `sjc render` re-renders from the checkpoint.
    rendered = sjc("render", str(run_dir), "--frames", "3", "--subpixel", "2")
    assert rendered.returncode == 0, rendered.stderr
    assert len(read_video_frames(run_dir / "render" / "turntable.mp4")) == 3


def test_sigint_checkpoints_and_resume_matches_uninterrupted(tmp_path: Path) -> None:
    steps = 40
    recipe = write_recipe(tmp_path, steps=steps, top="lr_final_ratio = 0.2")  # the decay resumes too
    straight = sjc("run", str(recipe), "--run-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    run_dir = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "sjc_core", "run", str(recipe), "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run_dir / "metrics.jsonl"
    stderr = interrupt_after_logged_steps(process, metrics)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    assert f"Continue with: sjc run {recipe} --run-dir {run_dir} --resume" in stderr  # the real command
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "interrupted" and 3 <= status["step"] < steps
    assert load_checkpoint(run_dir / "checkpoints" / "last.safetensors").step == status["step"]

    resumed = sjc("run", str(recipe), "--run-dir", str(run_dir), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = field_tensors(tmp_path / "straight"), field_tensors(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"
    steps_logged = [json.loads(l)["step"] for l in metrics.read_text().splitlines()]
    assert steps_logged == list(range(1, steps + 1))


def test_learning_rate_decays_from_lr_to_lr_times_final_ratio(tmp_path: Path) -> None:
    """Every parameter group's rate follows lr * ratio ** (k / (steps - 1)) at step k, the
    metrics record the rate each step took, and the default (ratio 1) keeps it constant."""
    steps = 5
    recipe = load_recipe(write_recipe(tmp_path, steps=steps, top="lr_final_ratio = 0.1"), load_registry())
    trainer = engine.Trainer.create(recipe, engine.build_components(recipe, torch.device("cpu")))
    bases = [group["lr"] for group in trainer.optimizer.param_groups]
    for k in range(steps):
        result = trainer.train_step()
        expected = 0.1 ** (k / (steps - 1))
        assert result.lr == pytest.approx(0.05 * expected, rel=1e-12)
        for group, base in zip(trainer.optimizer.param_groups, bases):
            assert group["lr"] == pytest.approx(base * expected, rel=1e-12)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(bases[0] * 0.1, rel=1e-12)

    run_dir = tmp_path / "decayed"
    engine.run(recipe, run_dir)
    rates = [json.loads(line)["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rates == pytest.approx([0.05 * 0.1 ** (k / (steps - 1)) for k in range(steps)], rel=1e-12)

    constant = load_recipe(write_recipe(tmp_path / "constant", steps=steps), load_registry())
    trainer = engine.Trainer.create(constant, engine.build_components(constant, torch.device("cpu")))
    assert {trainer.train_step().lr for _ in range(steps)} == {0.05}
    assert [group["lr"] for group in trainer.optimizer.param_groups] == bases


def test_nan_stops_run_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, steps=8), load_registry())
    parts = engine.build_components(recipe, torch.device("cpu"))

    def explodes_late(render, progress: float) -> torch.Tensor:
        value = render.opacity.mean()
        return value * float("nan") if progress >= 0.5 else value * 0

    parts.losses.append(("explodes", explodes_late))
    run_dir = tmp_path / "nan"
    with pytest.raises(engine.SjcError) as error:
        engine.run(recipe, run_dir, parts=parts)
    message = str(error.value)
    assert "explodes" in message and "step 5" in message and "step 4" in message
    assert load_checkpoint(run_dir / "checkpoints" / "last.safetensors").step == 4
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"


def test_non_finite_parameters_are_never_checkpointed(tmp_path: Path) -> None:
    """Finite losses and gradients but an update that leaves Inf in the field (issue 14:
    `--set lr=1e39 --set checkpoint_every=1` kept an all-inf checkpoint as the last good one):
    the run stops at the next checkpoint with one line and the previous checkpoint stays."""
    recipe = load_recipe(write_recipe(tmp_path, steps=8), load_registry())
    parts = engine.build_components(recipe, torch.device("cpu"))
    trainer_step = engine.Trainer.train_step

    def overflowing_step(self):  # type: ignore[no-untyped-def]
        result = trainer_step(self)
        if self.step == 5:
            with torch.no_grad():
                self.parts.field.density_grid.view(-1)[0] = float("inf")
        return result

    run_dir = tmp_path / "inf"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.Trainer, "train_step", overflowing_step)
        with pytest.raises(engine.SjcError) as error:
            engine.run(recipe, run_dir, parts=parts)
    message = str(error.value)
    assert "parameters became NaN or Inf by step 6" in message and "step 4" in message and "\n" not in message
    snapshot = load_checkpoint(run_dir / "checkpoints" / "last.safetensors")
    assert snapshot.step == 4 and all(torch.isfinite(t).all() for t in snapshot.field_state.values())


def test_resume_without_run_is_a_clear_error(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    result = sjc("run", str(recipe), "--resume", "--run-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "nothing to resume" in result.stderr and "Traceback" not in result.stderr


def test_render_of_non_run_folder_is_a_clear_error(tmp_path: Path) -> None:
    result = sjc("render", str(tmp_path))
    assert result.returncode == 2 and "not a run folder" in result.stderr
