"""A training step makes no host round trip: what a CUDA run does, checked on the CPU.

The step runs on the code path a GPU takes (the renderer's dense layout, the voxel field's
torch backend or the hash grid, torch's Adamax: ``SJC_NATIVE=0``), with every
tensor-to-host method patched to raise when sjc code calls it (tests/host_guard.py). On a
real GPU the same calls would make the host wait for the device; here they are caught by
the call itself. A CUDA-only test checks the same with CUDA's own sync detector.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from host_guard import forbid_host_sync
from sjc_core.plugins import load_registry
from sjc_core.recipes.recipe import load_recipe
from sjc_core.runs import engine
from test_engine import make_images

# Host-side helpers that read *host* tensors (built by the trainer from numpy poses), which
# on a GPU run live on the CPU and cost no device wait.
HOST_INPUT_HELPERS = ("sjc_plugins.priors.empirical._as_numpy",)


@pytest.fixture
def device_path(monkeypatch):
    """The GPU code path, on the CPU: dense sample layout, no compiled kernels."""
    monkeypatch.setattr("sjc_core.render.samples.compact_samples", lambda device: False)
    monkeypatch.setenv("SJC_NATIVE", "0")


def write_recipe(tmp_path: Path, prior: str, field: str) -> Path:
    path = tmp_path / "step.toml"
    path.write_text(
        f'name = "step"\nseed = 1\nsteps = 20\ndevice = "cpu"\noutput = "{(tmp_path / "runs").as_posix()}"\n'
        "log_every = 5\nview_every = 10\ncheckpoint_every = 10\n"
        f"{prior}\n{field}\n"
        '[[losses]]\nname = "emptiness"\nweight = 100.0\n'
        '[[losses]]\nname = "center-depth"\nweight = 10.0\n'
        "[camera]\nresolution = 16\ntest_frames = 2\n"
    )
    return path


def empirical_prior(tmp_path: Path) -> str:
    images = make_images(tmp_path / "images")
    return f'[prior]\nname = "empirical"\nimages = "{images.as_posix()}"\nresolution = 16\n'


def sd_prior(tmp_path: Path) -> str:
    from tiny_models import build_sd_folder

    folder = build_sd_folder(tmp_path / "tiny-sd")
    return f'[prior]\nname = "stable-diffusion"\nmodel = "{folder.as_posix()}"\nprompt = "a rose"\nguidance_scale = 10.0\n'


FIELDS = {
    "voxel": '[field]\nname = "voxel"\ngrid_size = 12\nbackend = "torch"\n',
    "hashgrid": '[field]\nname = "hashgrid"\ngrid_size = 12\nlevels = 4\nlog2_table_size = 10\nmax_resolution = 32\n',
}
PRIORS = {"empirical": empirical_prior, "stable-diffusion": sd_prior}


@pytest.mark.parametrize(
    "prior, field", [("empirical", "voxel"), ("empirical", "hashgrid"), ("stable-diffusion", "voxel")]
)
def test_train_steps_make_no_host_round_trip(tmp_path, device_path, prior, field):
    recipe = load_recipe(write_recipe(tmp_path, PRIORS[prior](tmp_path), FIELDS[field]), load_registry())
    parts = engine.build_components(recipe, torch.device("cpu"))
    trainer = engine.Trainer.create(recipe, parts)
    with forbid_host_sync(allow=HOST_INPUT_HELPERS) as violations:
        results = [trainer.train_step() for _ in range(4)]
    assert violations == []
    # the steps did their work: the field moved, and the terms read back afterwards are finite
    engine.Trainer.fetch(results)
    assert [r.step for r in results] == [1, 2, 3, 4]
    for result in results:
        assert set(result.terms) == {"emptiness", "center-depth", "paas"}
        assert all(torch.isfinite(torch.tensor(v)) for v in result.terms.values())
    assert results[-1].terms["paas"] > 0


def test_the_guard_catches_a_host_read_in_a_step(tmp_path, device_path):
    """The test above can fail: a loss that reads its value back is caught."""
    recipe = load_recipe(write_recipe(tmp_path, empirical_prior(tmp_path), FIELDS["voxel"]), load_registry())
    parts = engine.build_components(recipe, torch.device("cpu"))
    name, loss = parts.losses[0]
    parts.losses[0] = (name, lambda render, progress: loss(render, progress) * float(render.opacity.mean() > 0))
    trainer = engine.Trainer.create(recipe, parts)
    with pytest.raises(AssertionError, match="host sync"):
        with forbid_host_sync(modules=("sjc_core", "sjc_plugins", __name__), allow=HOST_INPUT_HELPERS):
            trainer.train_step()


def test_metrics_get_one_record_per_step_read_every_log_every(tmp_path):
    """log_every batches the read-back; metrics.jsonl still has every step, in order."""
    recipe_path = write_recipe(tmp_path, empirical_prior(tmp_path), FIELDS["voxel"])
    recipe = load_recipe(recipe_path, load_registry(), overrides=["log_every=7", "steps=16"])
    summary = engine.run(recipe, tmp_path / "run")
    records = [json.loads(line) for line in (summary.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 17))
    assert all(set(r["terms"]) == {"emptiness", "center-depth", "paas"} for r in records)
    assert len({r["terms"]["paas"] for r in records}) > 1  # each record holds its own step's values


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_does_not_synchronise(tmp_path):
    """On a GPU, CUDA's own detector: no synchronising call in a training step."""
    recipe_path = write_recipe(tmp_path, empirical_prior(tmp_path), FIELDS["voxel"])
    recipe = load_recipe(recipe_path, load_registry(), overrides=["device=cuda"])
    parts = engine.build_components(recipe, torch.device("cuda"))
    trainer = engine.Trainer.create(recipe, parts)
    trainer.train_step()  # first use: caches, uploads
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
