"""UV-textured mesh export, mesh clean-up and prior-free loading, on fields whose colours are known.

The pixel-prior field is a voxel ball of radius 0.5 with a hard edge (its density ramps
from 0 to 1000 over one voxel, so its renders show a surface), whose colour depends only
on the direction from the centre: red where x > 0, blue where x < 0, and green in latitude bands
(on where floor(2 * y / r) is even). The texture is read back through the UVs at surface
points away from the colour edges and compared with that rule; the textured mesh's render
is compared with the field's own render and with the vertex-coloured mesh's.
"""

from __future__ import annotations

import io
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from analytic_ball import ball_renderer
from sjc_core.errors import SjcError
from sjc_core.mesh import (
    cleanup,
    colors,
    texture,
    uv_bake,
)
from sjc_core.mesh import (
    extract as mesh,
)
from sjc_core.mesh import (
    raster as mesh_raster,
)
from sjc_core.mesh.export import export_run_mesh, load_mesh_run
from sjc_core.plugins import load_registry
from sjc_core.render.cameras import intrinsics, look_at
from sjc_core.runs.checkpoint import describe_run, load_checkpoint, save_checkpoint

GRID = 40  # voxel 0.05 over [-1, 1]
VOXEL = 2.0 / GRID
RADIUS = 0.5
PEAK = 1000.0  # density inside the ball; it ramps to 0 over one voxel around r = RADIUS, so renders
LEVEL = 500.0  # see a surface (not a soft shell) and LEVEL cuts the mesh at r = RADIUS
COLOUR_TOLERANCE = 8  # uint8 levels: a texel read back through the UVs away from colour edges


def expected_colour(points: np.ndarray) -> np.ndarray:
    """The field's colour rule in [0, 1] (see the module docstring)."""
    d = points / np.linalg.norm(points, axis=-1, keepdims=True)
    red = (d[..., 0] > 0).astype(float)
    green = (np.floor(2 * d[..., 1]) % 2 == 0).astype(float)
    return np.stack([red, green, 1 - red], axis=-1)


def edge_distance(points: np.ndarray) -> np.ndarray:
    """Distance (on the ball, approximately) from each point to the nearest colour edge."""
    d = points / np.linalg.norm(points, axis=-1, keepdims=True)
    band = 2 * d[..., 1]
    to_band = np.abs(band - np.round(band)) / 2  # in units of y / r
    return RADIUS * np.minimum(np.abs(d[..., 0]), to_band)


def _inverse_softplus(sigma: torch.Tensor) -> torch.Tensor:
    return torch.where(sigma > 20, sigma, torch.log(torch.expm1(sigma.clamp(min=1e-4))))


def _set_ball(field: torch.nn.Module, channels: int) -> None:
    """The ball's density and colours in the voxel field's layout (density [Z, Y, X], features [Z, Y, X, C])."""
    centres = -1 + (torch.arange(GRID, dtype=torch.float64) + 0.5) * (2 / GRID)
    z, y, x = torch.meshgrid(centres, centres, centres, indexing="ij")
    r = torch.sqrt(x**2 + y**2 + z**2)
    sigma = (LEVEL + PEAK * (RADIUS - r) / VOXEL).clamp(0, PEAK)
    colour = torch.as_tensor(expected_colour(torch.stack([x, y, z], -1).numpy() + 1e-9))
    with torch.no_grad():
        field.density_grid.copy_(_inverse_softplus(sigma) - field.density_shift)
        field.feature_grid.zero_()
        field.feature_grid[..., :3] = (16 * colour - 8).float()  # 2*sigmoid(+-8)-1 = +-0.9993


def _make_run(root: Path, prior_table: str, channels: int, with_run_info: bool = True) -> Path:
    """A real one-step run whose checkpoint is then replaced by the known ball."""
    from sjc_core.recipes.recipe import load_recipe
    from sjc_core.runs import engine

    recipe_path = root / "ball.toml"
    recipe_path.write_text(
        f'name = "ball"\nsteps = 1\noutput = "{(root / "runs").as_posix()}"\ndevice = "cpu"\n\n{prior_table}\n\n'
        f'[field]\nname = "voxel"\ngrid_size = {GRID}\n\n[camera]\ntest_frames = 1\n'
    )
    recipe = load_recipe(recipe_path, load_registry())
    summary = engine.run(recipe, stream=io.StringIO())
    parts = engine.build_components(recipe, torch.device("cpu"))
    _set_ball(parts.field, channels)
    info = describe_run(parts.prior, engine.camera_plan(recipe, parts.prior).radius) if with_run_info else None
    save_checkpoint(engine.RunFolder(summary.run_dir).checkpoint, 1, parts.field, run_info=info)
    return summary.run_dir


@pytest.fixture(scope="module")
def ball_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        from conftest import write_sample_images
    except ImportError:  # tests/ imported as a package
        from tests.conftest import write_sample_images
    root = tmp_path_factory.mktemp("ball-run")
    images = write_sample_images(root / "images")
    prior = f'[prior]\nname = "empirical"\nimages = "{images.as_posix()}"\nresolution = 16'
    return _make_run(root, prior, channels=3)


@pytest.fixture(scope="module")
def ball(ball_run: Path):
    """The ball run's field (built without its prior), its marching-cubes mesh and value range.

    The mesh is cut at the automatic threshold: where the renders turn half opaque."""
    run = load_mesh_run(ball_run, load_registry(), "auto")
    assert run.prior is None  # the checkpoint's run_info was enough
    result = mesh.extract_mesh(run.field, probe_radius=run.radius)
    assert abs(np.linalg.norm(result.vertices, axis=1).mean() - RADIUS) < VOXEL  # on the density ramp
    return run.field, result, run.value_range


def _uv_at(baked: texture.BakedTexture) -> tuple[np.ndarray, np.ndarray]:
    """Face centres of the UV mesh (points on the surface) and their UVs (exact: UVs are affine per face)."""
    m = baked.mesh
    return m.vertices[m.faces].mean(axis=1), m.uv[m.faces].mean(axis=1)


def _check_colours(points: np.ndarray, colours: np.ndarray, label: str, minimum: int = 500) -> None:
    away = edge_distance(points) > 2 * VOXEL  # trilinear colour blends up to sqrt(3) voxels from an edge
    error = np.abs(colours[away] - 255 * expected_colour(points[away]))
    print(f"{label}: {away.sum()} points away from colour edges, max error {error.max():.1f}, "
          f"99th percentile {np.percentile(error, 99):.1f} (of 255)")
    assert away.sum() > minimum
    assert error.max() <= COLOUR_TOLERANCE, error.max()


def test_texture_sampled_through_the_uvs_gives_the_field_colours(ball) -> None:
    field, result, value_range = ball
    uv_mesh = uv_bake.unwrap(result.vertices, result.faces, result.normals, 512)
    assert uv_mesh.uv.min() >= 0 and uv_mesh.uv.max() <= 1
    np.testing.assert_array_equal(uv_mesh.vertices, result.vertices[uv_mesh.source])
    baked = texture.bake_from_field(field, uv_mesh, value_range, inset=VOXEL / 2)
    assert baked.texture.shape == (512, 512, 3) and baked.texture.dtype == np.uint8
    assert baked.covered > 0.3 * 512**2  # the charts fill a good part of the square
    points, uv = _uv_at(baked)
    _check_colours(points, mesh_raster.sample_texture(baked.texture, uv), "texture through UVs")
    # texels between the charts were filled from the charts: every texel is a mix of the
    # ball's colours (red + blue = 1 for all of them and their averages), none is black
    tex = baked.texture.astype(int)
    assert (np.abs(tex[..., 0] + tex[..., 2] - 255) <= 2).all()


@pytest.mark.parametrize("fmt", ["obj", "glb"])
def test_written_textured_meshes_load_back_with_the_texture(ball, tmp_path: Path, fmt: str) -> None:
    field, result, value_range = ball
    baked = texture.bake_from_field(field, uv_bake.unwrap(result.vertices, result.faces, result.normals, 256),
                                    value_range, inset=VOXEL / 2)
    written = texture.write_textured(baked, tmp_path / f"ball.{fmt}", fmt)
    names = sorted(p.name for p in written)
    assert names == (["ball.mtl", "ball.obj", "ball.png"] if fmt == "obj" else ["ball.glb"])
    loaded = trimesh.load(tmp_path / f"ball.{fmt}", force="mesh", process=False)
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)
    material = loaded.visual.material
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    assert image is not None and image.size == (256, 256)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), baked.texture)
    assert len(loaded.faces) == len(baked.mesh.faces) and abs(loaded.volume / result_volume(result) - 1) < 1e-3
    # the colours read back through the file's own UVs are the field's
    tri = np.asarray(loaded.vertices)[loaded.faces].mean(axis=1)
    uv = np.asarray(loaded.visual.uv)[loaded.faces].mean(axis=1)
    _check_colours(tri, mesh_raster.sample_texture(np.asarray(image.convert("RGB")), uv), f"{fmt} read back")


def result_volume(result: mesh.MeshResult) -> float:
    return float(mesh.to_trimesh(result).volume)


def test_textured_render_is_closer_to_the_field_than_vertex_colours(ball) -> None:
    """Render the field, the vertex-coloured mesh and the textured mesh from one test camera.

    Compared over the ball's inside (two pixels in from the silhouette, where the mesh's hard
    edge and the field's soft one differ for both meshes alike): the colours, not the outline.
    """
    from scipy.ndimage import binary_erosion

    from sjc_core.render.view import render_view

    field, result, value_range = ball
    size, fov = 128, 50.0
    K = intrinsics(fov, size, size)
    e, a = math.radians(25), math.radians(35)
    c2w = look_at(1.6 * np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)]))
    with torch.no_grad():
        out = render_view(field, K, c2w, size, size, keep_weights=False)
    reference = np.clip((out.image[:3].permute(1, 2, 0).double().numpy() - value_range[0]) / 2, 0, 1)
    vertex_colours = colors.feature_colors(field, result.vertices, result.normals, value_range, inset=VOXEL / 2)
    baked = texture.bake_from_field(field, uv_bake.unwrap(result.vertices, result.faces, result.normals, 512),
                                    value_range, inset=VOXEL / 2)
    plain = mesh_raster.render_mesh(result.vertices, result.faces, K, c2w, size, colors=vertex_colours)
    textured = mesh_raster.render_mesh(baked.mesh.vertices, baked.mesh.faces, K, c2w, size, uv=baked.mesh.uv,
                                       texture=baked.texture)
    np.testing.assert_array_equal(plain.mask, textured.mask)  # the same surface, cut only along seams
    whole = plain.mask & (out.opacity.numpy() > 0.5)
    inside = binary_erosion(plain.mask, iterations=2) & whole
    assert inside.mean() > 0.2
    scores = {name: (mesh_raster.psnr(picture.rgb, reference, whole), mesh_raster.psnr(picture.rgb, reference, inside))
              for name, picture in (("vertex colours", plain), ("texture 512", textured))}
    print(f"PSNR against the field's render ({inside.sum()} pixels inside the ball, {whole.sum()} with its rim): "
          + ", ".join(f"{name} {a:.2f} dB inside ({b:.2f} with the rim)" for name, (b, a) in scores.items()))
    assert scores["texture 512"][1] > scores["vertex colours"][1] + 1.0
    assert scores["texture 512"][0] > scores["vertex colours"][0]


def _analytic_renderer(size: int, radius: float):
    """Exact picture and depth of a ball of ``radius`` coloured by the rule; a black
    background, so that a texel that took it would show."""
    return ball_renderer(size, radius, expected_colour, background=0.0)


def test_texture_from_views_leaves_no_texel_unfilled(ball) -> None:
    """The latent route: three views from one side see half the ball; the rest is filled from neighbours."""
    _, result, _ = ball
    size = 64
    radius = float(np.linalg.norm(result.vertices, axis=1).mean())  # the mesh's, so depths agree
    poses = [look_at(1.5 * np.array([math.sin(a), 0.3, math.cos(a)])) for a in (-0.6, 0.0, 0.6)]
    calls: list[tuple[str, int, int]] = []
    baked = texture.bake_from_views(uv_bake.unwrap(result.vertices, result.faces, result.normals, 256),
                                    _analytic_renderer(size, radius), poses, intrinsics(60.0, size, size), size,
                                    tolerance=0.05, progress=lambda *call: calls.append(call))
    assert calls == [("texture", i, 3) for i in range(4)]
    print(f"views: {baked.seen} texels seen, {baked.filled_from_neighbours} filled from neighbours")
    assert baked.filled_from_neighbours > 0.3 * baked.covered  # the back of the ball is unseen
    # every texel, seen, filled or between charts, is a mix of the ball's colours (red + blue
    # = 1): never the black background of the views
    tex = baked.texture.astype(int)
    assert (np.abs(tex[..., 0] + tex[..., 2] - 255) <= 2).all()
    points, uv = _uv_at(baked)
    front = points[:, 2] > 0.25  # squarely seen by the middle view
    _check_colours(points[front], mesh_raster.sample_texture(baked.texture, uv[front]), "views, front", minimum=150)
    # the unseen back copies seen colours: pure red or pure blue, never the grey of "no colour"
    back = mesh_raster.sample_texture(baked.texture, uv[points[:, 2] < -0.25])
    assert len(back) > 100 and (back[:, [0, 2]].max(axis=1) >= 250).mean() > 0.95


# ---- clean-up ---------------------------------------------------------------------------------


def test_smoothing_keeps_the_volume_and_removes_the_staircase(ball) -> None:
    _, result, _ = ball
    before = mesh.to_trimesh(result)
    v, f, n, report = cleanup.clean_mesh(result.vertices, result.faces, result.normals, smooth=10)
    after = trimesh.Trimesh(v, f, process=False)
    rough = lambda verts: float(np.std(np.linalg.norm(verts, axis=1)))
    print(f"smooth 10: radius spread {rough(result.vertices):.5f} -> {rough(v):.5f}, "
          f"volume change {after.volume / before.volume - 1:+.4f}")
    assert rough(v) < 0.7 * rough(result.vertices)
    assert abs(after.volume / before.volume - 1) < 0.01
    assert (report.faces_before, report.faces_after) == (len(result.faces), len(f))
    assert (np.einsum("ij,ij->i", n, v) > 0).mean() > 0.99  # normals still point outward


def test_decimation_reaches_the_face_count_and_keeps_the_shape(ball) -> None:
    _, result, _ = ball
    v, f, _, report = cleanup.clean_mesh(result.vertices, result.faces, result.normals, target_faces=1000)
    after = trimesh.Trimesh(v, f, process=False)
    print(report.summary(), f"volume change {after.volume / result_volume(result) - 1:+.4f}")
    assert 950 <= len(f) <= 1000 and report.faces_after == len(f) and report.vertices_after == len(v)
    assert abs(after.volume / result_volume(result) - 1) < 0.03
    surface = np.linalg.norm(result.vertices, axis=1).mean()
    assert np.abs(np.linalg.norm(v, axis=1) - surface).max() < VOXEL / 2  # the kept vertices stay on the ball
    assert report.summary().startswith(f"clean-up (decimate to 1000): {len(result.faces)} -> {len(f)} faces")
    assert after.is_watertight  # a ball has no thin parts to pinch (see mesh_cleanup's docstring)
    # a target above the face count leaves the mesh as it is, and says so
    same = cleanup.clean_mesh(result.vertices, result.faces, result.normals, target_faces=10 * len(result.faces))
    np.testing.assert_array_equal(same[1], result.faces)
    assert "no decimation, already at most" in same[3].summary()


# ---- run_info: export without building the prior -----------------------------------------------


def test_checkpoints_record_what_the_field_needs(ball_run: Path, tmp_path: Path) -> None:
    info = load_checkpoint(ball_run / "checkpoints" / "last.safetensors").run_info
    assert info == {"channels": 3, "value_range": (-1.0, 1.0), "radius": pytest.approx(1.5)}
    field = torch.nn.Linear(1, 1)
    save_checkpoint(tmp_path / "old.safetensors", 1, field)
    assert load_checkpoint(tmp_path / "old.safetensors").run_info is None
    path = tmp_path / "bad.safetensors"
    save_checkpoint(path, 1, field)
    raw = path.read_bytes()  # a checkpoint whose run_info was damaged: one line naming it
    header_len = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + header_len].decode().replace('"extra"', '"run_info":"{\\"channels\\": 0}","extra"', 1)
    padded = header.encode() + b" " * ((8 - len(header) % 8) % 8)
    path.write_bytes(len(padded).to_bytes(8, "little") + padded + raw[8 + header_len :])
    with pytest.raises(SjcError, match="damaged checkpoint metadata .run_info: channels 0"):
        load_checkpoint(path)


def test_old_checkpoints_still_export_by_building_the_prior(tmp_path: Path) -> None:
    try:
        from conftest import write_sample_images
    except ImportError:
        from tests.conftest import write_sample_images
    images = write_sample_images(tmp_path / "images")
    prior = f'[prior]\nname = "empirical"\nimages = "{images.as_posix()}"\nresolution = 16'
    run_dir = _make_run(tmp_path, prior, channels=3, with_run_info=False)
    run = load_mesh_run(run_dir, load_registry(), "none")
    assert run.prior is not None and run.value_range == (-1.0, 1.0) and run.radius == pytest.approx(1.5)
    shutil.rmtree(images)  # the old route needs the prior's files; the export says which is missing
    with pytest.raises(SjcError, match="images"):
        export_run_mesh(run_dir, threshold=LEVEL, colors="none")


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run of a tiny Stable Diffusion (4 latent channels) whose field is the ball."""
    try:
        from tiny_models import build_sd_folder
    except ImportError:
        from tests.tiny_models import build_sd_folder
    root = tmp_path_factory.mktemp("latent-run")
    model = build_sd_folder(root / "tiny-sd")
    prior = f'[prior]\nname = "stable-diffusion"\nmodel = "{model.as_posix()}"\nprompt = "a ball"\nguidance_scale = 3.0'
    return _make_run(root, prior, channels=4), model


def test_latent_texture_through_the_decoder_and_geometry_without_the_prior(latent_run, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sjc_core.cli import build_app

    run_dir, model = latent_run
    result = CliRunner().invoke(build_app(), ["export-mesh", str(run_dir), "--threshold", str(LEVEL),
                                              "--texture", "64", "--views", "3", "--format", "glb"])
    assert result.exit_code == 0, result.output
    assert "colours: views, texture 64x64" in result.output and "filled from neighbours" in result.output
    loaded = trimesh.load(run_dir / "mesh" / "textured.glb", force="mesh", process=False)
    image = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    assert image.shape == (64, 64, 3)
    # geometry alone needs no prior: it works with the model folder gone (and views then cannot)
    moved = tmp_path / "elsewhere"
    shutil.move(str(model), str(moved))
    try:
        report = export_run_mesh(run_dir, threshold=LEVEL, colors="none", out=tmp_path / "plain.ply")
        assert "colours: none" in report and "watertight" in report
        with pytest.raises(SjcError, match="model") as caught:
            export_run_mesh(run_dir, threshold=LEVEL, colors="views", out=tmp_path / "views.ply")
        print(f"views without the model: {caught.value}")
    finally:
        shutil.move(str(moved), str(model))


# ---- the command line ---------------------------------------------------------------------------


def test_cli_writes_textured_files_with_clean_up_counts(ball_run: Path, run_sjc) -> None:
    code, out, err = run_sjc("export-mesh", str(ball_run), "--threshold", str(LEVEL), "--texture", "128",
                             "--smooth", "5", "--faces", "2000")
    assert code == 0, err
    folder = ball_run / "mesh"
    for name in ("textured.obj", "textured.mtl", "textured.png", "textured.glb"):
        assert str(folder / name) in out and (folder / name).is_file(), out
    assert "colours: features, texture 128x128" in out and out.count("\n") == 1
    counts = re.search(r"clean-up \(smooth 5, decimate to 2000\): (\d+) -> (\d+) faces, (\d+) -> (\d+) vertices", out)
    assert counts is not None, out
    faces_before, faces_after, vertices_before, vertices_after = map(int, counts.groups())
    assert faces_before > 2000 >= faces_after > 1800 and vertices_before > vertices_after
    for phase in ("sampling", "marching cubes", "clean-up", "unwrap", "texture"):
        assert f"export-mesh {phase} " in err, err
    assert err.index("clean-up") < err.index("unwrap") < err.index("export-mesh texture")
    loaded = trimesh.load(folder / "textured.obj", force="mesh", process=False)
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals) and len(loaded.faces) <= 2000
    # the summary says what is true of the files: watertight geometry, seam-split vertices
    glb = trimesh.load(folder / "textured.glb", force="mesh", process=False)
    welded = glb.copy()
    welded.merge_vertices(merge_tex=True, merge_norm=True)
    assert not glb.is_watertight and welded.is_watertight
    split = re.search(r"geometry watertight; the textured files split it into (\d+) vertices along UV seams", out)
    assert split is not None, out
    assert int(split.group(1)) == len(glb.vertices) > len(welded.vertices)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--texture", "1000"], "--texture: 1000 is not a power of two from 64 to 8192"),
        (["--texture", "16384"], "--texture: 16384 is not a power of two"),
        (["--texture", "256", "--format", "ply"], "--format: ply carries no texture"),
        (["--texture", "256", "--colors", "none"], "--texture: a texture needs colours"),
        (["--faces", "3"], "--faces: 3 is too few"),
        (["--smooth", "-1"], "--smooth: -1 is not a number of passes"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(ball_run: Path, run_sjc, args: list[str], message: str) -> None:
    code, _, err = run_sjc("export-mesh", str(ball_run), *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err


def test_missing_run_is_one_line(tmp_path: Path, run_sjc) -> None:
    code, _, err = run_sjc("export-mesh", str(tmp_path / "nowhere"), "--texture", "256")
    assert code == 2 and err.count("\n") == 1 and "not a run folder" in err, err


# ---- the rasteriser ---------------------------------------------------------------------------


def test_rasteriser_covers_a_square_without_cracks_and_keeps_the_nearest() -> None:
    xy = np.array([[1.5, 1.5], [8.5, 1.5], [8.5, 8.5], [1.5, 8.5]])
    raster = mesh_raster.rasterize(xy, np.array([[0, 1, 2], [0, 2, 3]]), 10, 10)
    assert raster.mask.sum() == 49 and raster.mask[2:9, 2:9].all()  # pixel centres 2..8 inside, none twice
    np.testing.assert_allclose(raster.bary.sum(axis=2)[raster.mask], 1.0)
    # two overlapping triangles: the nearer one wins wherever both cover
    tri = np.array([[0.0, 0.0], [9.0, 0.0], [0.0, 9.0]])
    both = mesh_raster.rasterize(np.concatenate([tri, tri]), np.array([[0, 1, 2], [3, 4, 5]]), 10, 10,
                                 depth=np.array([2.0, 2.0, 2.0, 1.0, 1.0, 1.0]))
    assert (both.face[both.mask] == 1).all()


def test_texture_lookup_convention() -> None:
    """v = 0 is the bottom row; texel centres at half-integers."""
    tex = np.zeros((4, 4, 3))
    tex[3, 0] = 1.0  # bottom-left texel
    np.testing.assert_allclose(mesh_raster.sample_texture(tex, np.array([[0.125, 0.125]]))[0], 1.0)
    np.testing.assert_allclose(mesh_raster.sample_texture(tex, np.array([[0.125, 0.875]]))[0], 0.0)
