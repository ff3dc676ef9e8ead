"""Mesh export: marching cubes on known densities, vertex colours, and `sjc export-mesh` on a run."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh  # the `mesh` extra, part of the `test` extra

from analytic_ball import ball_renderer
from sjc_core.errors import SjcError
from sjc_core.mesh import colors as mesh_colors
from sjc_core.mesh import export, extract

RADIUS = 0.5
SPHERE_VOLUME = 4.0 / 3.0 * math.pi * RADIUS**3
SPHERE_AREA = 4.0 * math.pi * RADIUS**2


class AnalyticField(torch.nn.Module):
    """A field without ``density_volume``: density falls linearly through ``level`` at |p - c| = r.

    Colour is red on the +x side and blue on the -x side (features in [-1, 1]).
    """

    def __init__(self, spheres: list[tuple[tuple[float, float, float], float]], level: float = 10.0) -> None:
        super().__init__()
        self.register_buffer("aabb", torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
        self.spheres = [(torch.tensor(c), r) for c, r in spheres]
        self.level = level
        self.step_size = 0.01

    def density(self, points: torch.Tensor) -> torch.Tensor:
        best = torch.zeros(points.shape[0])
        for centre, radius in self.spheres:
            inside = 200.0 * (radius - (points - centre).norm(dim=-1)) + self.level
            best = torch.maximum(best, inside.clamp(min=0))
        return best

    def features(self, points: torch.Tensor) -> torch.Tensor:
        red = (points[:, 0] > 0).float()
        return torch.stack([2 * red - 1, -torch.ones_like(red), 1 - 2 * red], dim=-1)


def test_sampled_sphere_is_watertight_with_the_analytic_volume_and_area() -> None:
    field = AnalyticField([((0.0, 0.0, 0.0), RADIUS)])
    result = extract.extract_mesh(field, threshold=10.0, resolution=64)
    tm = extract.to_trimesh(result)
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.volume > 0  # faces wind counter-clockwise seen from outside
    print(f"sampled sphere: volume error {tm.volume / SPHERE_VOLUME - 1:+.4f}, area error {tm.area / SPHERE_AREA - 1:+.4f}")
    assert abs(tm.volume / SPHERE_VOLUME - 1) < 0.02
    assert abs(tm.area / SPHERE_AREA - 1) < 0.02
    radii = np.linalg.norm(result.vertices, axis=1)
    assert np.abs(radii - RADIUS).max() < 2.0 / 64  # every vertex within a voxel of the true surface
    assert (np.einsum("ij,ij->i", result.normals, result.vertices) > 0).all()  # normals point outward


def test_surface_touching_the_box_is_closed() -> None:
    """A sphere poking out of the box is cut by its walls; the padding closes the cut."""
    field = AnalyticField([((0.0, 0.0, 0.8), RADIUS)])
    tm = extract.to_trimesh(extract.extract_mesh(field, threshold=10.0, resolution=48))
    assert tm.is_watertight
    assert tm.bounds[1, 2] == pytest.approx(1.0)  # flat on the wall, not beyond it
    cap = math.pi * 0.3**2 * (3 * RADIUS - 0.3) / 3  # the part of the ball above z = 1
    assert abs(tm.volume / (SPHERE_VOLUME - cap) - 1) < 0.03


class HardBall(torch.nn.Module):
    """Density 500 inside radius 0.5, ~0 outside, the edge blurred over a fraction of a voxel."""

    def __init__(self, peak: float = 500.0) -> None:
        super().__init__()
        self.register_buffer("aabb", torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
        self.step_size = 0.01
        self.peak = peak

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self.peak * torch.sigmoid((RADIUS - points.norm(dim=-1)) / 0.005)


def test_auto_threshold_puts_the_surface_where_renders_see_it() -> None:
    """Rays through a hard ball turn half opaque at its edge: the automatic level finds it."""
    field = HardBall()
    level = extract.surface_threshold(field, extract.color_views(1.5, 8))
    assert level is not None and 10 < level < 500
    result = extract.extract_mesh(field, resolution=64)
    assert result.threshold == pytest.approx(level)
    tm = extract.to_trimesh(result)
    assert tm.is_watertight
    radii = np.linalg.norm(result.vertices, axis=1)
    assert abs(radii.mean() - RADIUS) < 2.0 / 64  # within a voxel of the edge


class UnevenBall(HardBall):
    """The hard ball, but its x < -0.2 side a quarter as dense (20 against 80): both sides
    end opaque, yet rays meet half opacity there at a lower density (a thinly spread body
    beside a dense part, as the demo's snowman body beside its hat)."""

    def density(self, points: torch.Tensor) -> torch.Tensor:
        peak = torch.where(points[:, 0] < -0.2, 20.0, 80.0)
        return peak * torch.sigmoid((RADIUS - points.norm(dim=-1)) / 0.005)


def test_auto_threshold_keeps_the_thinner_part_of_an_object() -> None:
    """About 40 % of the probe rays turn half opaque on the thin side: a cut at the median
    (~48) would drop that side; the automatic level keeps the whole ball."""
    field = UnevenBall()
    level = extract.surface_threshold(field, extract.color_views(1.5, 8))
    assert level is not None and level < 20
    assert extract.surface_threshold(field, extract.color_views(1.5, 8), quantile=0.5) > 40  # the median's cut
    result = extract.extract_mesh(field, resolution=48)
    thin_side = result.vertices[:, 0] < -0.3
    assert thin_side.any() and abs(np.linalg.norm(result.vertices, axis=1).mean() - RADIUS) < 2.0 / 48
    assert extract.to_trimesh(result).is_watertight
    median_cut = extract.extract_mesh(field, threshold=48.0, resolution=48)
    assert not (median_cut.vertices[:, 0] < -0.3).any()  # the median's mesh lacks that side


def test_a_field_no_ray_sees_falls_back_to_half_opaque_per_voxel_then_to_half_its_maximum() -> None:
    field = HardBall(peak=0.01)  # nearly transparent: no ray ends opaque
    assert extract.surface_threshold(field, extract.color_views(1.5, 4), size=16) is None
    # ln 2 / voxel (34.7) lies above this young field's densest point: half its maximum is cut instead
    result = extract.extract_mesh(field, resolution=16)
    assert len(result.faces) > 0 and result.threshold == pytest.approx(result.density_range[1] / 2)
    assert extract.automatic_level(None, math.log(2) / 0.02, 100.0) == pytest.approx(math.log(2) / 0.02)


def test_threshold_above_the_density_is_a_user_error() -> None:
    field = AnalyticField([((0.0, 0.0, 0.0), RADIUS)])
    with pytest.raises(SjcError, match="threshold"):
        extract.extract_mesh(field, threshold=1e6, resolution=16)


def test_largest_piece_drops_floaters() -> None:
    field = AnalyticField([((-0.3, 0.0, 0.0), 0.4), ((0.7, 0.6, 0.6), 0.1)])
    both = extract.to_trimesh(extract.extract_mesh(field, threshold=10.0, resolution=48))
    assert len(both.split(only_watertight=False)) == 2
    kept = extract.to_trimesh(extract.extract_mesh(field, threshold=10.0, resolution=48, largest_only=True))
    assert len(kept.split(only_watertight=False)) == 1
    assert abs(kept.volume / (4 / 3 * math.pi * 0.4**3) - 1) < 0.03


def test_feature_colors_follow_the_field() -> None:
    field = AnalyticField([((0.0, 0.0, 0.0), RADIUS)])
    result = extract.extract_mesh(field, threshold=10.0, resolution=40)
    colors = mesh_colors.feature_colors(field, result.vertices, result.normals, (-1.0, 1.0), inset=0.01)
    right = result.vertices[:, 0] > 0.05
    left = result.vertices[:, 0] < -0.05
    assert (colors[right] == [255, 0, 0]).all()
    assert (colors[left] == [0, 0, 255]).all()


def _sphere_renderer(field: AnalyticField, size: int):
    """Exact picture and depth of the analytic sphere (red where x > 0, else blue), for view colours."""
    return ball_renderer(
        size, RADIUS, lambda hit: np.where((hit[:, 0] > 0)[:, None], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]), background=1.0
    )


def test_view_colors_project_vertices_into_the_right_pixels() -> None:
    from sjc_core.render.cameras import intrinsics

    field = AnalyticField([((0.0, 0.0, 0.0), RADIUS)])
    result = extract.extract_mesh(field, threshold=10.0, resolution=40)
    size = 48
    colors = mesh_colors.view_colors(
        result.vertices, result.normals, _sphere_renderer(field, size), extract.color_views(1.5, 12),
        intrinsics(60.0, size, size), size, tolerance=0.05,
    )
    right = result.vertices[:, 0] > 0.1
    left = result.vertices[:, 0] < -0.1
    assert (colors[right][:, 0] > 200).mean() > 0.98 and (colors[right][:, 2] < 55).mean() > 0.98
    assert (colors[left][:, 2] > 200).mean() > 0.98 and (colors[left][:, 0] < 55).mean() > 0.98


def test_progress_reports_each_phase_step_by_step() -> None:
    """``progress(phase, done, total)``: 0 when a phase starts, then every step (mesh.py prints nothing)."""
    from sjc_core.render.cameras import intrinsics

    calls: list[tuple[str, int, int]] = []
    result = extract.extract_mesh(HardBall(), resolution=48, progress=lambda *call: calls.append(call))
    phases = list(dict.fromkeys(phase for phase, _, _ in calls))
    assert phases == ["sampling", "probe", "marching cubes"]
    for phase in phases:
        steps = [(done, total) for name, done, total in calls if name == phase]
        assert [done for done, _ in steps] == list(range(steps[0][1] + 1))
    assert calls[-1] == ("marching cubes", 1, 1) and ("probe", 8, 8) in calls
    colour_calls: list[tuple[str, int, int]] = []
    mesh_colors.view_colors(result.vertices, result.normals, _sphere_renderer(None, 16), extract.color_views(1.5, 3),
                     intrinsics(60.0, 16, 16), 16, tolerance=0.05, progress=lambda *call: colour_calls.append(call))
    assert colour_calls == [("colours", done, 3) for done in range(4)]


@pytest.mark.parametrize("fmt", ["ply", "obj", "glb"])
def test_written_files_load_back_with_colours(tmp_path: Path, fmt: str) -> None:
    field = AnalyticField([((0.0, 0.0, 0.0), RADIUS)])
    result = extract.extract_mesh(field, threshold=10.0, resolution=32)
    result.colors = mesh_colors.feature_colors(field, result.vertices, result.normals, (-1.0, 1.0), inset=0.01)
    path = extract.write_mesh(result, tmp_path / f"sphere.{fmt}", fmt)
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.faces) == len(result.faces)
    assert abs(loaded.volume / SPHERE_VOLUME - 1) < 0.03
    colours = np.asarray(loaded.visual.vertex_colors)[:, :3]
    assert len(colours) == len(loaded.vertices)
    assert {tuple(c) for c in colours} <= {(255, 0, 0), (0, 0, 255)}


# ---- `sjc export-mesh` on a real run folder -------------------------------------------------

GRID = 40  # voxel 0.05 over [-1, 1]
LEVEL = 10.0  # the density at the ball's surface


def _inverse_softplus(sigma: torch.Tensor) -> torch.Tensor:
    return torch.where(sigma > 20, sigma, torch.log(torch.expm1(sigma.clamp(min=1e-4))))


@pytest.fixture(scope="module")
def sphere_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (one-step) run with a pixel prior whose checkpoint is then replaced by a known field:
    a ball of radius 0.5, red where x > 0 and blue where x < 0."""
    import io

    try:
        from conftest import write_sample_images
    except ImportError:  # tests/ imported as a package
        from tests.conftest import write_sample_images
    from sjc_core.plugins import load_registry
    from sjc_core.recipes.recipe import load_recipe
    from sjc_core.runs import engine
    from sjc_core.runs.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("mesh-run")
    images = write_sample_images(root / "images")
    recipe_path = root / "sphere.toml"
    recipe_path.write_text(
        f"""
name = "sphere"
steps = 1
output = "{(root / 'runs').as_posix()}"
device = "cpu"

[prior]
name = "empirical"
images = "{images.as_posix()}"
resolution = 16

[field]
name = "voxel"
grid_size = {GRID}

[camera]
test_frames = 1
"""
    )
    recipe = load_recipe(recipe_path, load_registry())
    summary = engine.run(recipe, stream=io.StringIO())
    parts = engine.build_components(recipe, torch.device("cpu"))
    field = parts.field
    centres = -1 + (torch.arange(GRID, dtype=torch.float64) + 0.5) * (2 / GRID)
    z, y, x = torch.meshgrid(centres, centres, centres, indexing="ij")  # grid layout [Z, Y, X]
    r = torch.sqrt(x**2 + y**2 + z**2)
    sigma = (200.0 * (RADIUS - r) + LEVEL).clamp(min=0)  # linear within a voxel of the surface
    with torch.no_grad():  # the voxel field's documented layout: density [Z, Y, X], features [Z, Y, X, C]
        field.density_grid.copy_(_inverse_softplus(sigma) - field.density_shift)
        red = (x > 0).float()
        field.feature_grid[..., 0] = 16 * red - 8
        field.feature_grid[..., 1] = -8.0
        field.feature_grid[..., 2] = 8 - 16 * red
    save_checkpoint(engine.RunFolder(summary.run_dir).checkpoint, 1, field)
    return summary.run_dir


def _sides(loaded) -> tuple[np.ndarray, np.ndarray]:
    colours = np.asarray(loaded.visual.vertex_colors)[:, :3].astype(int)
    x = np.asarray(loaded.vertices)[:, 0]
    return colours[x > 0.1], colours[x < -0.1]


def test_export_mesh_of_a_known_ball(sphere_run: Path, run_sjc) -> None:
    code, out, err = run_sjc("export-mesh", str(sphere_run), "--threshold", f"{LEVEL:.6f}")
    assert code == 0, err
    path = sphere_run / "mesh" / "mesh.ply"
    assert f"wrote {path}" in out and "watertight" in out and "colours: features" in out and "(given)" in out
    # progress on stderr, one line per phase (no probe: the threshold is given); stdout only the report
    for line in ("export-mesh sampling [1/1] 100%", "export-mesh marching cubes [1/1] 100%",
                 "export-mesh colours [1/1] 100%"):
        assert line in err, err
    assert "probe" not in err and "export-mesh" not in out and out.count("\n") == 1, out
    loaded = trimesh.load(path, force="mesh", process=False)
    assert loaded.is_watertight
    volume_error = loaded.volume / SPHERE_VOLUME - 1
    area_error = loaded.area / SPHERE_AREA - 1
    print(f"ball: volume error {volume_error:+.4f}, area error {area_error:+.4f}")
    assert abs(volume_error) < 0.02 and abs(area_error) < 0.02, (volume_error, area_error)
    right, left = _sides(loaded)
    assert (right == [255, 0, 0]).all(axis=1).mean() > 0.99
    assert (left == [0, 0, 255]).all(axis=1).mean() > 0.99


def test_export_mesh_colours_from_decoded_views(sphere_run: Path, tmp_path: Path) -> None:
    """The route latent fields take (render, decode, project), here on a field whose colours are known."""
    from typer.testing import CliRunner

    from sjc_core.cli import build_app

    target = tmp_path / "ball.glb"
    result = CliRunner().invoke(
        build_app(), ["export-mesh", str(sphere_run), "--colors", "views", "--views", "8", "--out", str(target)]
    )
    assert result.exit_code == 0, result.output
    loaded = trimesh.load(target, force="mesh", process=False)
    right, left = _sides(loaded)
    assert (right[:, 0] > 180).mean() > 0.95 and (right[:, 2] < 75).mean() > 0.95
    assert (left[:, 2] > 180).mean() > 0.95 and (left[:, 0] < 75).mean() > 0.95


def test_export_mesh_progress_of_probe_and_decoded_views(sphere_run: Path, run_sjc, tmp_path: Path) -> None:
    """Without --threshold the probe renders show progress, and colours count the decoded views one by one."""
    target = tmp_path / "ball.ply"
    code, out, err = run_sjc("export-mesh", str(sphere_run), "--colors", "views", "--views", "3", "--out", str(target))
    assert code == 0, err
    assert f"wrote {target}" in out and "(auto)" in out and "colours: views" in out
    for line in ("export-mesh sampling [1/1]", *(f"export-mesh probe [{i}/8]" for i in range(1, 9)),
                 "export-mesh marching cubes [1/1]", *(f"export-mesh colours [{i}/3]" for i in range(1, 4))):
        assert line in err, err
    assert err.index("sampling") < err.index("probe") < err.index("marching cubes") < err.index("colours")
    assert "export-mesh" not in out and "it/s" not in out


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("`", ""))


def test_threshold_help_states_the_rule_the_code_and_readme_follow() -> None:
    """``--threshold``'s help gives the render-probe default (with its fallback) in the README's words."""
    import typer.main

    from sjc_core.cli import build_app

    command = typer.main.get_command(build_app()).commands["export-mesh"]  # type: ignore[attr-defined]
    (option,) = [param for param in command.params if param.name == "threshold"]
    help_text = _flat(option.help)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("**`sjc export-mesh RUN_DIR")
    paragraph = _flat(readme[start : readme.index("```", start)])
    for rule in ("10th percentile of the densities where rays from eight views turn half opaque", "ln 2 / voxel if no ray ends opaque"):
        assert rule in help_text, help_text
        assert rule in paragraph, paragraph
    assert "ln2/voxel: one voxel" not in help_text  # the old, wrong default
    # the rule the help states is the one extract_mesh follows: eight probe views, then the fallback
    calls: list[tuple[str, int, int]] = []
    extract.extract_mesh(HardBall(), resolution=32, progress=lambda *call: calls.append(call))
    assert ("probe", 8, 8) in calls


def test_mesh_module_does_not_import_the_commands(sphere_run: Path) -> None:
    """The core's mesh export takes its registry from sjc_core.plugins, never from the CLI layer."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "import sjc_core.mesh.export\n"
        "assert not any(m.startswith('sjc_core.commands') for m in sys.modules)\n"
        "phases = []\n"
        "sjc_core.mesh.export.export_run_mesh(Path(sys.argv[1]), threshold=10.0, out=Path(sys.argv[2]),\n"
        "                              progress=lambda phase, done, total: phases.append(phase))\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('sjc_core.commands') or m == 'sjc_core.cli')\n"
        "assert not loaded, loaded\n"
        "assert phases and 'sampling' in phases and 'colours' in phases, phases\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(sphere_run), str(sphere_run / "mesh" / "core.ply")],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""  # the core prints nothing itself


def test_export_mesh_user_errors(sphere_run: Path, run_sjc, tmp_path: Path) -> None:
    code, _, err = run_sjc("export-mesh", str(sphere_run), "--threshold", "1e9")
    assert code == 2 and "threshold" in err and "Traceback" not in err
    with pytest.raises(SjcError, match="--format"):
        export.export_run_mesh(sphere_run, fmt="stl")
    with pytest.raises(SjcError, match="does not end in .glb"):
        export.export_run_mesh(sphere_run, fmt="glb", out=tmp_path / "x.ply")
    with pytest.raises(SjcError, match="not a run folder"):
        export.export_run_mesh(tmp_path)


def test_mesh_threshold_benchmark_on_the_known_ball(sphere_run: Path) -> None:
    """benchmarks/mesh_threshold.py end to end: on the ball each quantile's mesh lies inside
    the field's silhouette and covers most of it (rays grazing the ball's soft rim turn half
    opaque a little outside any interior level: ~0.82 at the median, ~0.89 at the 10th
    percentile), and the lower quantile cuts lower and covers more."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "mesh_threshold.py"
    done = subprocess.run([sys.executable, str(script), str(sphere_run), "--quantiles", "0.5", "0.1", "--size", "48"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.split("JSON:\n", 1)[1])
    (result,) = report["results"]
    high, low = result["rows"]
    assert (high["quantile"], low["quantile"]) == (0.5, 0.1)
    assert low["threshold"] < high["threshold"] and low["coverage"] > high["coverage"]
    for row in (high, low):
        assert row["coverage"] > 0.8 and row["outside"] < 0.01 and row["components"] == 1, row
        assert row["psnr_db"] > 15, row  # red and blue halves where the field has them
