"""The voxel field plugin and the renderer's general behaviour (small grids, fast)."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from sjc_core.contracts import BuildContext, Field
from sjc_core.errors import SjcError
from sjc_core.plugins import load_registry
from sjc_core.render.cameras import intrinsics, look_at
from sjc_core.render.composite import BACKGROUND_DEPTH
from sjc_core.render.rays import camera_rays
from sjc_core.render.view import render_view
from sjc_plugins.fields.trilinear import gather_corners, scatter_corners, trilinear_corners
from sjc_plugins.fields.voxel import VoxelField, VoxelOptions


@functools.lru_cache(maxsize=1)
def plugin():  # type: ignore[no-untyped-def]
    return load_registry().get("fields", "voxel")


def build(channels: int = 4, value_range=None, seed: int = 0, **options) -> VoxelField:  # type: ignore[no-untyped-def]
    info = plugin()
    return info.factory(info.options(**options), BuildContext(channels=channels, value_range=value_range, seed=seed))


def randomise(field: VoxelField, seed: int = 0, density: float = 2.0) -> VoxelField:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        field.density_grid.copy_(torch.randn(field.density_grid.shape, generator=gen) * density + 1.0)
        field.feature_grid.copy_(torch.randn(field.feature_grid.shape, generator=gen))
        if field.bg is not None:
            field.bg.copy_(torch.randn(field.bg.shape, generator=gen))
        field.d_scale.fill_(0.1)
    return field


def camera(eye, fov: float = 50.0, size: int = 24, target=None):  # type: ignore[no-untyped-def]
    return intrinsics(fov, size, size), look_at(np.asarray(eye, dtype=np.float64), target)


# ---------------------------------------------------------------- plugin and options


def test_registered_through_entry_points_with_described_options():
    info = plugin()
    assert info.module == "sjc_plugins.fields.voxel_options"  # the light entry point (imports no torch)
    assert info.options is VoxelOptions
    for name, spec in VoxelOptions.model_fields.items():
        assert spec.description, f"option {name} has no description"
    field = build()
    assert isinstance(field, Field) and isinstance(field, torch.nn.Module)
    assert field.density_grid.shape == (100, 100, 100) and field.feature_grid.shape == (100, 100, 100, 4)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"grid_size": [10, 10]}, "grid_size"),
        ({"grid_size": 1}, "grid_size"),
        ({"grid_size": [4, 1, 4]}, "grid_size"),
        ({"box_half": 0}, "box_half"),
        ({"step_ratio": -0.5}, "step_ratio"),
        ({"bg_texture_size": -1}, "bg_texture_size"),
        ({"feature_activation": "tanh"}, "feature_activation"),
        ({"backend": "cuda"}, "backend"),
        ({"colour_lr": 0.1}, "colour_lr"),
    ],
)
def test_bad_options_name_the_field(options, name):
    with pytest.raises(ValidationError) as err:
        VoxelOptions(**options)
    assert name in str(err.value)


def test_missing_channels_is_a_one_line_error():
    info = plugin()
    with pytest.raises(SjcError) as err:
        info.factory(info.options(), BuildContext())
    assert "channels" in str(err.value) and "\n" not in str(err.value)


def test_activation_follows_the_prior():
    assert build(grid_size=4).activation == "identity"
    pixel = randomise(build(channels=3, value_range=(-1.0, 1.0), grid_size=6), density=5.0)
    assert pixel.activation == "2*sigmoid-1" and pixel.feature_grid.shape[-1] == 3
    points = torch.rand(200, 3) * 2 - 1
    feats = pixel.features(points)
    assert feats.shape == (200, 3) and feats.abs().max() < 1
    raw = pixel._gather(pixel.feature_grid, points)
    torch.testing.assert_close(feats, 2 * torch.sigmoid(raw) - 1)
    sig = randomise(build(channels=2, grid_size=6, feature_activation="sigmoid"))
    s = sig.features(points)
    assert s.shape == (200, 2) and (s > 0).all() and (s < 1).all()
    assert pixel.background(F.normalize(torch.randn(10, 3), dim=1)).abs().max() < 1


def test_initial_values_follow_the_reference_and_the_seed():
    a, b, c = build(grid_size=8, seed=1), build(grid_size=8, seed=1), build(grid_size=8, seed=2)
    assert (a.density_grid == 0).all() and a.d_scale.item() == 0.0
    torch.testing.assert_close(a.feature_grid, b.feature_grid)
    assert not torch.equal(a.feature_grid, c.feature_grid)
    assert 0.8 < a.feature_grid.std().item() < 1.2  # features ~ N(0, 1) as the reference's
    assert a.bg.shape == (1, 4, 4, 4)
    d = build(grid_size=8, init_density=-2.0, init_features=0.0)
    assert (d.density_grid == -2).all() and (d.feature_grid == 0).all()


def test_param_groups_learning_rates():
    field = build(grid_size=6, bg_lr=0.01)
    groups = field.param_groups(0.05)
    assert groups[0]["lr"] == 0.05 and groups[1]["lr"] == 0.01
    assert groups[0]["params"] == [field.density_grid, field.feature_grid, field.d_scale]
    assert groups[1]["params"] == [field.bg]
    listed = [id(p) for g in groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in field.parameters())
    torch.optim.Adamax(groups)  # the optimizer accepts them
    plain = build(grid_size=6, bg_texture_size=0)
    assert plain.bg is None and len(plain.param_groups(0.05)) == 1
    assert torch.equal(plain.background(torch.randn(5, 3)), torch.zeros(5, 4))


def test_state_dict_round_trip():
    field = randomise(build(grid_size=8))
    state = field.state_dict()
    assert set(state) == {"density_grid", "feature_grid", "d_scale", "bg"}
    fresh = build(grid_size=8, seed=5)
    fresh.load_state_dict(state)
    K, pose = camera([0.0, 0.5, 2.0], size=12)
    a = render_view(field, K, pose, 12, 12)
    b = render_view(fresh, K, pose, 12, 12)
    assert torch.equal(a.image, b.image) and torch.equal(a.depth, b.depth)


# ---------------------------------------------------------------- grid maintenance


def test_resample_preserves_a_smooth_field():
    field = build(grid_size=12, init_features=0.0)
    centres = (torch.arange(12, dtype=torch.float32) + 0.5) / 12 * 2 - 1
    z, y, x = torch.meshgrid(centres, centres, centres, indexing="ij")
    with torch.no_grad():
        field.density_grid.copy_(x + 2 * y - z)
        field.feature_grid[..., 1] = 0.5 * x - y
    points = (torch.rand(300, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.8
    def gather() -> torch.Tensor:
        grids = (field.density_grid, field.feature_grid)
        return torch.cat([field._gather(grid, points) for grid in grids], 1).detach()

    before = gather()
    old_step = field.step_size
    field.resample([20, 16, 24])
    assert field.density_grid.shape == (24, 16, 20) and field.feature_grid.shape == (24, 16, 20, 4)
    assert field.grid_size == (20, 16, 24) and isinstance(field.feature_grid, torch.nn.Parameter)
    after = gather()
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)  # linear: reproduced exactly
    assert field.step_size < old_step


def test_density_volume_shape_and_values():
    field = randomise(build(grid_size=[6, 5, 4]))
    sigma, aabb = field.density_volume()
    assert sigma.shape == (4, 5, 6) and not sigma.requires_grad
    expected = F.softplus(field.density_grid * torch.exp(field.d_scale) + field.density_shift)
    torch.testing.assert_close(sigma, expected.detach())
    torch.testing.assert_close(aabb, torch.tensor([[-1.0] * 3, [1.0] * 3]))


# ---------------------------------------------------------------- rendering behaviour


def test_subpixel_render_of_a_constant_field_equals_plain():
    field = build(grid_size=8, bg_texture_size=0, init_density=60.0, init_features=0.0)
    colour = torch.tensor([0.3, -0.2, 0.7, 1.5])
    with torch.no_grad():
        field.feature_grid.copy_(colour.expand_as(field.feature_grid))
    K, pose = camera([0.0, 0.0, 2.5], fov=30.0, size=10)
    one = render_view(field, K, pose, 10, 10)
    two = render_view(field, K, pose, 10, 10, subpixel=2)
    assert one.image.shape == two.image.shape == (4, 10, 10)
    assert two.weights.shape[0] == 4 * 100
    torch.testing.assert_close(two.image, one.image, atol=1e-5, rtol=0)
    # every ray stops within its first samples at the front face, where zero padding fades
    # the grid values: each pixel is the feature vector times one scalar, nearly uniform
    ratio = one.image.detach().reshape(4, -1) / colour[:, None]
    torch.testing.assert_close(ratio, ratio[:1].expand(4, -1), atol=1e-5, rtol=0)
    assert 0.4 < ratio.min() and ratio.max() < 1 and ratio.max() - ratio.min() < 5e-3
    torch.testing.assert_close(two.opacity, torch.ones(10, 10), atol=1e-5, rtol=0)


def test_subpixel_rays_average_to_the_pixel_centre():
    K, pose = camera([0.3, 0.4, 2.0], size=6)
    _, rd1 = camera_rays(K, pose, 6, 6)
    _, rd3 = camera_rays(K, pose, 6, 6, subpixel=3)
    mean = F.normalize(rd3.view(6, 3, 6, 3, 3).mean(dim=(1, 3)).reshape(-1, 3), dim=1)
    torch.testing.assert_close(mean, rd1, atol=1e-3, rtol=0)


def test_chunked_render_equals_unchunked():
    field = randomise(build(grid_size=16))
    K, pose = camera([1.2, 0.6, 1.1], size=20)
    whole = render_view(field, K, pose, 20, 20)
    parts = render_view(field, K, pose, 20, 20, chunk_rays=37)
    for name in ("image", "depth", "opacity"):
        torch.testing.assert_close(getattr(parts, name), getattr(whole, name), atol=1e-6, rtol=1e-6)
    assert parts.weights.shape == whole.weights.shape and parts.sample_count == whole.sample_count
    torch.testing.assert_close(parts.weights, whole.weights, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("chunk_rays", [None, 37])
def test_pictures_without_weights_equal_a_full_render(chunk_rays):
    """keep_weights=False (videos, HD frames, meshes) changes no pixel and keeps the count."""
    field = randomise(build(grid_size=16))
    K, pose = camera([1.2, 0.6, 1.1], size=20)
    with torch.no_grad():
        whole = render_view(field, K, pose, 20, 20)
        light = render_view(field, K, pose, 20, 20, chunk_rays=chunk_rays, keep_weights=False)
    for name in ("image", "depth", "opacity"):
        torch.testing.assert_close(getattr(light, name), getattr(whole, name), atol=1e-6, rtol=1e-6)
    assert light.weights.shape == (400, 0) and light.sample_count == whole.sample_count


def test_rays_missing_the_box_show_pure_background():
    field = randomise(build(grid_size=8))
    eye = np.array([0.0, 0.0, 3.0])
    K, pose = camera(eye, target=np.array([0.0, 0.0, 6.0]), size=8)  # looking away
    out = render_view(field, K, pose, 8, 8)
    _, rd = camera_rays(K, pose, 8, 8)
    expected = field.background(rd).t().reshape(4, 8, 8)
    torch.testing.assert_close(out.image, expected, atol=0, rtol=0)
    assert (out.depth == BACKGROUND_DEPTH).all() and (out.opacity == 0).all()
    assert (out.weights == 0).all()
    # a wide view from afar: the corners miss the box and are pure background too
    K, pose = camera([0.0, 0.0, 4.0], fov=90.0, size=16)
    wide = render_view(field, K, pose, 16, 16)
    _, rd = camera_rays(K, pose, 16, 16)
    corner = field.background(rd).t().reshape(4, 16, 16)[:, 0, 0]
    torch.testing.assert_close(wide.image[:, 0, 0], corner, atol=0, rtol=0)
    assert wide.depth[0, 0] == BACKGROUND_DEPTH and wide.opacity[8, 8] > 0.5


def _render_and_grads(field: VoxelField, K, pose, size):  # type: ignore[no-untyped-def]
    field.zero_grad(set_to_none=True)
    out = render_view(field, K, pose, size, size)
    g = torch.sin(torch.arange(out.image.numel(), dtype=torch.float32)).view_as(out.image)
    loss = -(g * out.image).sum() + 1e4 * torch.log1p(10 * out.weights).sum() / out.sample_count
    loss = loss + 0.1 * out.depth.mean() + out.opacity.mean()
    loss.backward()
    grads = [p.grad.clone() for p in (field.density_grid, field.feature_grid, field.d_scale, field.bg)]
    return out, grads


@pytest.mark.parametrize("channels,value_range", [(4, None), (3, (-1.0, 1.0))])
def test_backends_agree_including_gradients(channels, value_range):
    K, pose = camera([0.9, 0.5, -0.7], size=16)
    results = {}
    for backend in ("auto", "torch", "generic"):
        field = randomise(build(channels, value_range, grid_size=[10, 12, 9], backend=backend), seed=3)
        results[backend] = _render_and_grads(field, K, pose, 16)
    ref_out, ref_grads = results["generic"]
    for backend in ("auto", "torch"):
        out, grads = results[backend]
        torch.testing.assert_close(out.image, ref_out.image, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(out.depth, ref_out.depth, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(out.weights, ref_out.weights, atol=1e-6, rtol=1e-4)
        for got, want in zip(grads, ref_grads):
            scale = want.abs().max().item() + 1e-12
            assert (got - want).abs().max().item() <= 1e-4 * scale


@pytest.mark.parametrize("output", ["depth", "opacity"])
def test_depth_and_opacity_gradients_alone_match_generic(output):
    """The native kernel sums opacity and depth itself and takes their gradients directly;
    each alone must give the generic path's density gradients. The camera is outside the
    box, so every ray enters at t_min > 0 (a depth gradient is then not shift-invariant)."""
    K, pose = camera([1.8, 1.0, -1.4], size=16)
    grads = {}
    for backend in ("auto", "generic"):
        field = randomise(build(4, None, grid_size=[10, 12, 9], backend=backend), seed=5)
        out = render_view(field, K, pose, 16, 16)
        weight = torch.cos(torch.arange(256, dtype=torch.float32)).view(16, 16)
        (weight * getattr(out, output)).sum().backward()
        grads[backend] = (field.density_grid.grad.clone(), field.d_scale.grad.clone(), getattr(out, output).detach())
    (dens, scale, value), (ref_dens, ref_scale, ref_value) = grads["auto"], grads["generic"]
    torch.testing.assert_close(value, ref_value, atol=1e-5, rtol=1e-5)
    assert ref_dens.abs().max() > 0
    assert (dens - ref_dens).abs().max() <= 1e-4 * ref_dens.abs().max()
    torch.testing.assert_close(scale, ref_scale, atol=1e-5, rtol=1e-4)


def test_vector_and_scalar_kernel_loops_give_the_same_bits():
    """The AVX2 loops (cell weights, softplus/alpha) must repeat the scalar loops' arithmetic
    exactly; ray lengths that are not multiples of 8 exercise the padded last vector."""
    from sjc_plugins.fields._voxel_native import kernel_or_reason

    lib, reason = kernel_or_reason()
    if lib is None:
        pytest.skip(f"no native kernel: {reason}")
    if lib.sjc_voxel_simd(1) == 0:
        pytest.skip("this CPU has no AVX2: only the scalar loops exist")
    K, pose = camera([1.7, 0.9, -1.3], size=20)
    field = randomise(build(3, (-1.0, 1.0), grid_size=[11, 13, 9]), seed=7)
    field.d_scale.data.fill_(0.4)
    try:
        runs = []
        for simd in (1, 0):
            assert lib.sjc_voxel_simd(simd) == simd
            runs.append(_render_and_grads(field, K, pose, 20))
    finally:
        lib.sjc_voxel_simd(1)
    (vec, vec_grads), (scalar, scalar_grads) = runs
    assert torch.equal(vec.weights, scalar.weights) and torch.equal(vec.image, scalar.image)
    assert torch.equal(vec.depth, scalar.depth)
    for a, b in zip(vec_grads, scalar_grads):
        assert torch.equal(a, b)


def test_camera_inside_the_box():
    field = randomise(build(grid_size=12), density=1.0)
    K, pose = camera([0.2, 0.1, 0.3], fov=70.0, size=16, target=np.array([0.0, -0.2, -1.0]))
    ro, rd = camera_rays(K, pose, 16, 16)
    from sjc_core.render.spans import box_intersect

    t_min, t_max = box_intersect(ro, rd, field.aabb)
    assert (t_min == 0).all() and (t_max > 0).all()
    out, grads = _render_and_grads(field, K, pose, 16)
    assert torch.isfinite(out.image).all() and (out.depth < BACKGROUND_DEPTH).all()
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    generic = randomise(build(grid_size=12, backend="generic"), density=1.0)
    ref, ref_grads = _render_and_grads(generic, K, pose, 16)
    torch.testing.assert_close(out.image, ref.image, atol=2e-5, rtol=1e-4)
    for got, want in zip(grads, ref_grads):
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_two_threads_give_the_same_render():
    field = randomise(build(grid_size=16))
    K, pose = camera([1.0, 0.8, 1.0], size=48)  # enough rays to split
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, g1 = _render_and_grads(field, K, pose, 48)
        torch.set_num_threads(2)
        two, g2 = _render_and_grads(field, K, pose, 48)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(two.image, one.image, atol=1e-6, rtol=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_scatter_is_the_transpose_of_the_gather():
    """scatter_corners against a brute-force loop over its corners, gather_corners against
    grid_sample, and <gather(T), v> == <T, scatter(v)>."""
    gen = torch.Generator().manual_seed(0)
    size = (5, 4, 3)  # x, y, z: a non-cubic grid catches axis mix-ups
    u = torch.rand(3, 30, generator=gen, dtype=torch.float64) * torch.tensor([[6.0], [5.0], [4.0]]) - 0.75
    corners = trilinear_corners(u, size)
    values = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    out = scatter_corners(corners, values, 60)
    index, weight = corners.table()
    dense = torch.zeros(60, 3, dtype=torch.float64)
    for s in range(30):
        for c in range(8):
            dense[index[c, s]] += weight[c, s] * values[s]
    torch.testing.assert_close(out, dense, atol=1e-12, rtol=1e-12)
    table = torch.randn(60, 3, generator=gen, dtype=torch.float64)
    gathered = gather_corners(table, corners)
    assert torch.allclose((gathered * values).sum(), (table * out).sum(), rtol=1e-12)
    grid = table.t().reshape(1, 3, 3, 4, 5)  # [1, C, Z, Y, X]
    q = (2 * u + 1) / torch.tensor([[5.0], [4.0], [3.0]], dtype=torch.float64) - 1  # align_corners=False
    expected = torch.nn.functional.grid_sample(grid, q.t().reshape(1, 30, 1, 1, 3), align_corners=False)
    torch.testing.assert_close(gathered, expected.reshape(3, 30).t(), atol=1e-12, rtol=1e-12)


def test_without_a_compiler_auto_falls_back_and_native_says_why(tmp_path):
    script = textwrap.dedent(
        """
        from sjc_core.contracts import BuildContext
        from sjc_core.errors import SjcError
        from sjc_plugins.fields.voxel import VoxelOptions, build_voxel_field
        ctx = BuildContext(channels=4)
        print(build_voxel_field(VoxelOptions(grid_size=4), ctx).backend)
        try:
            build_voxel_field(VoxelOptions(grid_size=4, backend="native"), ctx)
        except SjcError as exc:
            print("error:", exc)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "CC"}
    env.update(PATH=str(tmp_path), SJC_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "torch"
    assert lines[1].startswith("error: field.backend: the native kernel is unavailable: no C compiler")


def test_fov_and_focal_length_match_the_image():
    """Pixels at the image edge are FoV/2 off axis (the reference's intrinsics)."""
    K, pose = camera([0.0, 0.0, 2.0], fov=60.0, size=64)
    _, rd = camera_rays(K, pose, 64, 64)
    edge = rd.view(64, 64, 3)[32, 0]  # leftmost pixel centre, half a pixel inside the edge
    angle = math.degrees(math.atan2(-edge[0].item(), -edge[2].item()))
    focal = 32 / math.tan(math.radians(30))
    assert abs(angle - math.degrees(math.atan(31.5 / focal))) < 1e-4
