"""The mvdream prior in training (issue 26): N views per step, every estimator, no host sync, resume."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import interrupt_after_logged_steps, sjc_env
from host_guard import forbid_host_sync
from test_device_step import FIELDS, device_path, write_recipe  # noqa: F401
from test_mvdream import build_mvdream_folder

from sjc_core.plugins import load_registry
from sjc_core.recipes.recipe import load_recipe
from sjc_core.runs import engine
from sjc_core.runs.checkpoint import load_checkpoint

ESTIMATORS = {
    "paas": "",
    "sds": '[estimator]\nname = "sds"\n',
    "ism": '[estimator]\nname = "ism"\ninversion_steps = 2\n',
}


@pytest.fixture(scope="module")
def mvdream_table(tmp_path_factory) -> str:
    folder = build_mvdream_folder(tmp_path_factory.mktemp("mvdream-run") / "tiny-mvdream")
    return f'[prior]\nname = "mvdream"\nmodel = "{folder.as_posix()}"\nprompt = "a corgi"\nguidance_scale = 10.0\n'


def test_list_plugins_shows_mvdream() -> None:
    import json

    out = subprocess.run([sys.executable, "-m", "sjc_core", "list-plugins", "--kind", "priors", "--json"],
                         capture_output=True, text=True, env=sjc_env(), timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)["plugins"]}
    row = rows["mvdream"]
    assert row["distribution"] == "sjc" and row["module"] == "sjc_plugins.priors.mvdream_options"
    assert {"model", "checkpoint", "prompt", "guidance_scale", "views"} <= {o["name"] for o in row["options"]}
    assert json.loads(out.stdout)["warnings"] == []


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("field", ["voxel", "hashgrid"])
def test_multiview_steps_render_four_views_without_host_sync(tmp_path, device_path, mvdream_table, estimator, field):  # noqa: F811
    path = write_recipe(tmp_path, mvdream_table, FIELDS[field])
    path.write_text(path.read_text() + ESTIMATORS[estimator])
    recipe = load_recipe(path, load_registry())
    parts = engine.build_components(recipe, torch.device("cpu"))
    trainer = engine.Trainer.create(recipe, parts)
    seen = []
    original = parts.prior.condition_views
    parts.prior.condition_views = lambda views: seen.append(views) or original(views)
    before = {k: v.clone() for k, v in parts.field.state_dict().items()}
    with forbid_host_sync() as violations:
        results = [trainer.train_step() for _ in range(2)]
    assert violations == []
    engine.Trainer.fetch(results)
    assert all(math.isfinite(v) for r in results for v in r.terms.values())
    assert results[0].scored.shape == (1, 4, 8, 8)  # logs keep the first view
    views = seen[0]
    assert len(views) == 4
    turns = [(v.azimuth_deg - views[0].azimuth_deg) % 360 for v in views]
    np.testing.assert_allclose(turns, [0, 90, 180, 270], atol=1e-9)
    after = parts.field.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_cli_run_trains_and_resumes_bit_exactly(tmp_path: Path, mvdream_table: str) -> None:
    recipe = tmp_path / "mv.toml"
    recipe.write_text(
        f'name = "mv"\nseed = 3\nsteps = 12\ndevice = "cpu"\noutput = "{(tmp_path / "runs").as_posix()}"\n'
        "log_every = 1\nview_every = 6\ncheckpoint_every = 100\n"
        f"{mvdream_table}\n{FIELDS['voxel']}\n"
        '[[losses]]\nname = "emptiness"\nweight = 10.0\n'
        "[camera]\nresolution = 8\ntest_frames = 2\n"
    )
    straight = subprocess.run([sys.executable, "-m", "sjc_core", "run", str(recipe), "--run-dir", str(tmp_path / "a")],
                              capture_output=True, text=True, env=sjc_env(), timeout=300, check=False)
    assert straight.returncode == 0, straight.stderr
    run_dir = tmp_path / "b"
    process = subprocess.Popen([sys.executable, "-m", "sjc_core", "run", str(recipe), "--run-dir", str(run_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=sjc_env())
    stderr = interrupt_after_logged_steps(process, run_dir / "metrics.jsonl", steps=2)
    assert process.returncode == 130, stderr
    assert 2 <= load_checkpoint(run_dir / "checkpoints" / "last.safetensors").step < 12
    resumed = subprocess.run([sys.executable, "-m", "sjc_core", "run", str(recipe), "--run-dir", str(run_dir), "--resume"],
                             capture_output=True, text=True, env=sjc_env(), timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.safetensors")
    b = load_checkpoint(run_dir / "checkpoints" / "last.safetensors")
    assert a.step == b.step == 12
    assert all(torch.equal(a.field_state[k], b.field_state[k]) for k in a.field_state)
    assert (tmp_path / "a" / "views" / "step_000006.png").is_file()  # the first view's picture, decoded
    assert (tmp_path / "a" / "final" / "turntable_strip.png").is_file()


def test_sample_draws_whole_objects_of_four_views(tmp_path: Path, mvdream_table: str) -> None:
    """`sjc sample --prior mvdream`: n images = n/4 objects; each picture is the same whatever the batch size."""
    import imageio.v3 as iio

    model = mvdream_table.split('model = "')[1].split('"')[0]
    outs = {}
    for batch in (4, 8):
        out = tmp_path / f"b{batch}"
        result = subprocess.run(
            [sys.executable, "-m", "sjc_core", "sample", "--prior", "mvdream", "--set", f"prior.model={model}",
             "--set", "prior.prompt=a corgi", "--set", "prior.guidance_scale=3", "--n", "8", "--steps", "3",
             "--batch-size", str(batch), "--device", "cpu", "--out", str(out)],
            capture_output=True, text=True, env=sjc_env(), timeout=300, check=False,
        )
        assert result.returncode == 0, result.stderr
        outs[batch] = [iio.imread(out / f"sample_{i:03d}.png").astype(int) for i in range(8)]
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(outs[4], outs[8]))
    assert np.abs(outs[4][0] - outs[4][1]).max() > 0  # the views differ
    bad = subprocess.run(
        [sys.executable, "-m", "sjc_core", "sample", "--prior", "mvdream", "--set", f"prior.model={model}",
         "--set", "prior.prompt=a corgi", "--n", "3", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "bad")],
        capture_output=True, text=True, env=sjc_env(), timeout=300, check=False,
    )
    assert bad.returncode == 2 and "--n" in bad.stderr and "Traceback" not in bad.stderr


def test_gpu_step_benchmark_times_the_mvdream_step(tmp_path: Path) -> None:
    """benchmarks/gpu_step.py --prior mvdream: one tiny step, reported with its 4 views and UNet batch of 8."""
    import json

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "gpu_step.py"), "--tiny", "--prior", "mvdream", "--device", "cpu",
         "--steps", "1", "--warmup", "0", "--threads", "1"],
        capture_output=True, text=True, env=sjc_env(), timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["prior"] == "mvdream" and report["settings"]["views_per_step"] == 4
    assert report["settings"]["unet_batch"] == 8 and "MultiViewSelfAttention" in report["settings"]["attention"]
    assert report["ours"]["step_ms"] > 0 and report["ours"]["peak_memory"]["mib"] > 0
