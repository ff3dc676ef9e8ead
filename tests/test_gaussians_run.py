"""The gaussians field through real runs: `sjc run` writes the .ply, kill -9 + --resume is
bit-exact while the splat count changes, `sjc render` and `sjc export-mesh` work, and
`sjc fit` (separate rays) is one line."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import sjc_env
from sjc_plugins.fields.splat_ply import property_names, read_splat_ply
from test_engine import make_images

from sjc_core.plugins import load_registry
from sjc_core.recipes.recipe import load_recipe
from sjc_core.runs import engine
from sjc_core.runs.checkpoint import load_checkpoint

FIELD = """
[field]
name = "gaussians"
init_splats = 60
init_scale = 0.06
densify_start = 2
densify_every = 2
densify_stop = 10
grad_threshold = 0.0
max_splats = 400
bg_texture_size = 2
"""


def write_recipe(tmp_path: Path, steps: int = 10, field: str = FIELD) -> Path:
    """A short run on the empirical prior, checkpointing every 2 steps (``field``: its [field] table)."""
    images = make_images(tmp_path / "images")
    recipe = tmp_path / "splats.toml"
    recipe.write_text(
        f"""
name = "splats"
seed = 4
steps = {steps}
lr = 0.1
device = "cpu"
view_every = 5
checkpoint_every = 2
output = "{(tmp_path / 'runs').as_posix()}"

[prior]
name = "empirical"
images = "{images.name}"
resolution = 16
{field}
[[losses]]
name = "emptiness"
weight = 10.0

[[losses]]
name = "center-depth"
weight = 1.0

[camera]
test_frames = 3
"""
    )
    return recipe


def sjc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sjc_core", *args], check=False, capture_output=True, text=True,
                          env=sjc_env(), timeout=300)


# kill -9 while the checkpoint of step 8 is being written: step 6's is the last whole one
KILLED_AFTER_CHECKPOINT = """
import os, signal, sys
from pathlib import Path
from sjc_core.runs import checkpoint, engine
from sjc_core.plugins import load_registry
from sjc_core.recipes.recipe import load_recipe

save_file = checkpoint.save_file

def dies_writing_step_8(tensors, path, metadata):
    if metadata["step"] == "8":
        os.kill(os.getpid(), signal.SIGKILL)
    save_file(tensors, path, metadata=metadata)

checkpoint.save_file = dies_writing_step_8
engine.run(load_recipe(Path(sys.argv[1]), load_registry(), []), Path(sys.argv[2]))
"""


def test_run_writes_ply_and_resumes_bit_exactly_after_kill_9(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    straight = engine.run(load_recipe(recipe, load_registry(), []), tmp_path / "straight", stream=io.StringIO())
    assert straight.state == "finished" and straight.outputs["splats"] == "splats.ply"
    final = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.safetensors").field_state
    assert final["means"].shape[0] > 60  # densification ran (and the checkpoint holds the new count)
    assert {"grad_sum", "grad_seen"} <= set(final)

    table = read_splat_ply(tmp_path / "straight" / "final" / "splats.ply")
    assert list(table.dtype.names) == property_names(0) and table.shape == (final["means"].shape[0],)
    assert torch.equal(torch.from_numpy(table["opacity"].copy()), final["opacity_logits"])

    run_dir = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_CHECKPOINT, str(recipe), str(run_dir)],
                            check=False, capture_output=True, text=True, env=sjc_env(), timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    middle = load_checkpoint(run_dir / "checkpoints" / "last.safetensors")
    assert middle.step == 6 and middle.field_state["means"].shape[0] != 60
    resumed = sjc("run", str(recipe), "--run-dir", str(run_dir), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "crashed at step" in resumed.stderr and "Traceback" not in resumed.stderr
    again = load_checkpoint(run_dir / "checkpoints" / "last.safetensors").field_state
    assert final.keys() == again.keys()
    assert all(torch.equal(final[k], again[k]) for k in final), "the resumed run differs from the straight one"
    assert (run_dir / "final" / "splats.ply").read_bytes() == (tmp_path / "straight" / "final" / "splats.ply").read_bytes()

    rendered = sjc("render", str(run_dir), "--frames", "2", "--subpixel", "2")
    assert rendered.returncode == 0, rendered.stderr
    pytest.importorskip("skimage")
    exported = sjc("export-mesh", str(run_dir), "--resolution", "24")
    assert exported.returncode == 0, exported.stderr
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished" and status["outputs"]["splats"] == "splats.ply"


def test_reference_view_loss_on_splats_is_one_line(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, steps=2)
    recipe.write_text(recipe.read_text() + '\n[[losses]]\nname = "reference-view"\nimage = "images/img_0.png"\n')
    result = sjc("run", str(recipe))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert errors[0].startswith("error: the gaussians field renders whole cameras; rendering separate rays")


def test_a_run_whose_splats_all_get_pruned_stops_with_one_line_and_says_failed(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, steps=6)
    recipe.write_text(recipe.read_text().replace(
        "max_splats = 400", "max_splats = 400\nprune_opacity = 0.999\ninit_opacity = 0.01"
    ).replace("densify_start = 2", "densify_start = 3").replace("grad_threshold = 0.0", "grad_threshold = 1.0"))
    result = sjc("run", str(recipe))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "every splat was pruned at step" in errors[0] and "the last checkpoint (step 2) is kept" in errors[0]
    status = json.loads((tmp_path / "runs" / "splats-seed4" / "status.json").read_text())
    assert status["state"] == "failed" and "every splat was pruned" in status["error"]
