"""``sjc run`` says what it runs, where and what it is building before its first step."""

from __future__ import annotations

from pathlib import Path

from test_engine import write_recipe


def test_run_prints_its_start_up_block_before_the_first_step(run_sjc, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, steps=4)
    run_dir = tmp_path / "run"
    code, _, err = run_sjc("run", recipe, "--run-dir", run_dir, "--set", "log_every=2")
    assert code == 0, err
    lines = err.splitlines()
    first_step = next(i for i, line in enumerate(lines) if line.startswith("[2/4]"))
    block = lines[:first_step]
    from sjc_core import __version__

    assert block[0].startswith(f"sjc {__version__} (torch ") and block[0].endswith(f"recipe {recipe}")
    assert block[1].startswith("device: cpu (") and block[1].endswith(" threads)")
    assert block[2] == f"run folder: {run_dir}"
    # what is being built is named before it is built, then what was built
    assert block[3:5] == ["loading the prior (empirical)...", "building the field (voxel)..."]
    assert block[5] == "prior: empirical, 3 channels at 16x16, values in [-1, 1]"
    # the voxel field of grid_size 12: 12^3 density + 3 * 12^3 features, background texture, scale
    import torch

    from sjc_core.plugins import load_registry
    from sjc_core.recipes.recipe import load_recipe
    from sjc_core.training.trainer import build_components

    parts = build_components(load_recipe(recipe, load_registry()), torch.device("cpu"))
    count = sum(p.numel() for p in parts.field.parameters())
    assert count > 4 * 12**3
    assert block[6] == f"field: voxel, {count:,} parameters"
    assert block[7] == "estimator: paas; losses: emptiness, center-depth; 4 steps"
    assert not (run_dir / ".sjc.lock").exists()  # a finished folder keeps no empty lock file


def test_device_line_names_the_card_and_its_memory(monkeypatch) -> None:
    import torch

    from sjc_core.runs.startup import device_line

    class Properties:
        name = "NVIDIA H100 80GB HBM3"
        total_memory = 85_520_809_984

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Properties)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert device_line(torch.device("cuda", 1)) == "device: cuda:1, NVIDIA H100 80GB HBM3, 79.6 GiB"
    assert device_line(torch.device("cuda")) == "device: cuda:0, NVIDIA H100 80GB HBM3, 79.6 GiB"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert device_line(torch.device("cpu")) == "device: cpu (2 threads)"
