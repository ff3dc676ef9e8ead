"""The hash grid's occupancy grid: empty cells have no density, the fused renderer skips
their samples and still equals the generic path, the record follows its schedule, and a
run with it resumes bit-exactly after kill -9."""

from __future__ import annotations

import io
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import sjc_env
from sjc_plugins.fields import hashgrid as hg
from sjc_plugins.fields.occupancy import OccupancyGrid
from test_gaussians_run import KILLED_AFTER_CHECKPOINT, write_recipe
from test_hashgrid import _bundle, make_field

from sjc_core.plugins import load_registry
from sjc_core.recipes.recipe import load_recipe
from sjc_core.runs import engine
from sjc_core.runs.checkpoint import load_checkpoint


def lumpy_field(**options):
    """A small hash grid with a lumpy density (some samples pass the weight threshold, some not)."""
    field = make_field(grid_size=32, levels=4, log2_table_size=10, max_resolution=64, channels=3,
                       value_range=(-1.0, 1.0), **options)
    with torch.no_grad():
        field.encoding.table.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(9))
        field.density_out.bias.fill_(6.0)
    return field


def half_empty(field) -> None:
    """Record the half-space x < 0 as empty, the rest as full, and switch the grid on."""
    occ = field.occupancy
    with torch.no_grad():
        occ.record.fill_(1e6)
        occ.record[: occ.resolution // 2] = 0.0
        occ.active.fill_(True)


def test_threshold_is_the_opacity_of_one_step():
    grid = OccupancyGrid(4, torch.tensor([[-1.0] * 3, [1.0] * 3]), step=0.02, threshold=0.01, every=1, warmup=0)
    assert 1 - math.exp(-grid.min_density * 0.02) == pytest.approx(0.01)
    points = torch.tensor([[-0.9, 0.0, 0.0], [0.9, 0.0, 0.0], [5.0, -5.0, 0.2]])
    assert grid.occupied(points).all()  # before the warm-up ends nothing is skipped
    with torch.no_grad():
        grid.record[0] = grid.min_density * 1.01  # x cells 0: occupied; the rest empty
        grid.active.fill_(True)
    assert grid.occupied(points).tolist() == [True, False, False]  # outside the box: clamped to the edge cell


def test_empty_cells_have_no_density_and_the_rest_is_unchanged():
    field = lumpy_field(occupancy_resolution=8)
    points = torch.rand(400, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    before = field.density(points)
    half_empty(field)
    after = field.density(points)
    left = points[:, 0] < 0
    assert torch.all(after[left] == 0) and torch.equal(after[~left], before[~left])


def test_fused_path_skips_empty_samples_and_equals_the_generic_path(monkeypatch):
    from sjc_core.render import composite

    monkeypatch.setattr(hg, "SAMPLE_CHUNK", 1000)
    field = lumpy_field(occupancy_resolution=8)
    half_empty(field)
    bundle = _bundle(field)
    encoded = []
    inner = field.encode
    monkeypatch.setattr(field, "encode", lambda points: encoded.append(len(points)) or inner(points))
    results = []
    for fn in (field.render_foreground, lambda b: composite.generic_foreground(field, b)):
        encoded.clear()
        field.zero_grad(set_to_none=True)
        rgb, w = fn(bundle)
        (rgb.square().sum() + w.sum()).backward()
        results.append((rgb.detach(), w.detach(), field.encoding.table.grad.clone(), sum(encoded)))
    (rgb_f, w_f, g_f, n_f), (rgb_g, w_g, g_g, _) = results
    in_left = (bundle.points()[:, 0] < 0).sum()
    assert 0 < in_left < bundle.total
    assert n_f == bundle.total - int(in_left)  # the fused path encodes only occupied samples
    assert torch.all(w_f.view(-1)[bundle.positions[bundle.points()[:, 0] < -0.01]] == 0)
    torch.testing.assert_close(rgb_f, rgb_g, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w_f, w_g, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_f, g_g, rtol=1e-4, atol=1e-6)


def test_record_follows_its_schedule_and_is_reproducible():
    fields = [lumpy_field(occupancy_resolution=6, occupancy_every=4, occupancy_warmup=8) for _ in range(2)]
    field = fields[0]
    occ = field.occupancy
    for step in range(1, 4):
        assert field.after_step(step, None) is False
    assert torch.all(occ.record == 0) and not bool(occ.active)  # no refresh before step 4
    field.after_step(4, None)
    first = occ.record.clone()
    assert torch.all(first > 0) and not bool(occ.active)
    with torch.no_grad():
        field.density_out.weight.zero_()
        field.density_out.bias.fill_(-50.0)  # the field empties: the record decays, by 0.95 a refresh
    field.after_step(8, None)
    torch.testing.assert_close(occ.record, first * occ.decay)
    assert bool(occ.active)  # the warm-up is over
    other = fields[1]
    with torch.no_grad():
        other.density_out.weight.zero_()
        other.density_out.bias.fill_(-50.0)
    other.after_step(4, None)
    other.after_step(8, None)
    assert not torch.equal(other.occupancy.record, occ.record)  # same seed, different history: different record
    assert torch.all(other.occupancy.record < occ.record)


def test_a_checkpoint_from_before_the_occupancy_grid_still_loads(tmp_path: Path) -> None:
    from sjc_core.runs.checkpoint import load_field_state

    old = lumpy_field(occupancy_resolution=0)
    state = {key: value.clone() for key, value in old.state_dict().items()}
    assert not any(key.startswith("occupancy") for key in state)
    new = lumpy_field()  # the default: an occupancy grid
    assert new.occupancy is not None and new.occupancy.resolution == 64
    with torch.no_grad():
        new.encoding.table.zero_()
    load_field_state(tmp_path / "old.safetensors", new, state)
    assert torch.equal(new.encoding.table, old.encoding.table)
    assert torch.all(new.occupancy.record == 0) and not bool(new.occupancy.active)
    points = torch.rand(100, 3) * 2 - 1
    assert torch.equal(new.density(points), old.density(points))  # nothing skipped until the next refresh


FIELD = """
[field]
name = "hashgrid"
levels = 4
grid_size = 12
occupancy_resolution = 8
occupancy_every = 2
occupancy_warmup = 4
occupancy_threshold = 0.02
"""


@pytest.mark.slow
def test_run_with_occupancy_resumes_bit_exactly_after_kill_9(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, field=FIELD)
    straight = engine.run(load_recipe(recipe, load_registry(), []), tmp_path / "straight", stream=io.StringIO())
    assert straight.state == "finished"
    final = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.safetensors").field_state
    assert {"occupancy.record", "occupancy.active"} <= set(final) and bool(final["occupancy.active"])
    assert final["occupancy.record"].abs().sum() > 0

    run_dir = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_CHECKPOINT, str(recipe), str(run_dir)],
                            check=False, capture_output=True, text=True, env=sjc_env(), timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(run_dir / "checkpoints" / "last.safetensors").step == 6
    resumed = subprocess.run([sys.executable, "-m", "sjc_core", "run", str(recipe), "--run-dir", str(run_dir), "--resume"],
                             check=False, capture_output=True, text=True, env=sjc_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    again = load_checkpoint(run_dir / "checkpoints" / "last.safetensors").field_state
    assert final.keys() == again.keys()
    assert all(torch.equal(final[k], again[k]) for k in final), "the resumed run differs from the straight one"
