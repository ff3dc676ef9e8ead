"""The gaussians field: rasteriser geometry and compositing, densify/prune, the .ply, points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sjc_plugins.fields.gaussians import GaussianField
from sjc_plugins.fields.gaussians_options import GaussianOptions
from sjc_plugins.fields.splat_ply import SH_C0, property_names, read_splat_ply
from sjc_plugins.fields.splat_raster import (
    ALPHA_MAX,
    ALPHA_MIN,
    TRANSMITTANCE_MIN,
    Splats,
    covariances,
    project,
    rasterize,
)

from sjc_core.contracts import BuildContext
from sjc_core.errors import SjcError
from sjc_core.plugins import load_registry
from sjc_core.render.cameras import intrinsics, look_at
from sjc_core.render.rays import camera_rays
from sjc_core.render.view import render_rays, render_view
from sjc_core.training.optim import Adamax

RGB = BuildContext(channels=3, value_range=(-1.0, 1.0), seed=1)


def field(**options: object) -> GaussianField:
    return GaussianField(GaussianOptions(**{"bg_texture_size": 0, **options}), RGB)


def test_registered_through_the_entry_point() -> None:
    info = load_registry().get("fields", "gaussians")
    built = info.factory(info.options(init_splats=5), RGB)
    assert isinstance(built, GaussianField) and built.splat_count == 5


@pytest.mark.parametrize("subpixel", [1, 2])
def test_a_splat_lands_on_the_pixel_whose_ray_passes_through_it(subpixel: int) -> None:
    size = 24
    K, c2w = intrinsics(55, size, size), look_at(np.array([0.4, 0.6, 1.4]))
    _, rd = camera_rays(K, c2w, size, size)
    eye = torch.as_tensor(c2w[:3, 3], dtype=torch.float32)
    splat = field(init_splats=1, init_scale=0.002, init_opacity=0.95)
    for row, col, t in [(3, 19, 1.1), (12, 12, 1.6), (20, 2, 0.9)]:
        with torch.no_grad():
            splat.means[:] = eye + t * rd[row * size + col]
        out = render_view(splat, K, c2w, size, size, subpixel=subpixel)
        assert divmod(int(out.opacity.argmax()), size) == (row, col)
        # depth is the distance along the ray, the background at 10 behind what is left
        opacity = float(out.opacity[row, col].detach())
        assert float(out.depth[row, col].detach()) == pytest.approx(opacity * t + (1 - opacity) * 10.0, rel=1e-4)


def dense_reference(splats: Splats, K: torch.Tensor, w2c: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, ...]:
    """Every splat against every pixel, sorted by distance, cumulative product: the plain definition."""
    uv, cov2, distance, front = project(splats.means, covariances(splats.scales, splats.quats), K, w2c, 0.05)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # [P, 2]
    order = torch.argsort(distance)
    image = torch.zeros(h * w, splats.features.shape[1], dtype=torch.float64)
    opacity = torch.zeros(h * w, dtype=torch.float64)
    depth = torch.zeros(h * w, dtype=torch.float64)
    clear = torch.ones(h * w, dtype=torch.float64)
    for i in order.tolist():
        if not front[i]:
            continue
        inverse = torch.linalg.inv(cov2[i])
        d = pix - uv[i]
        alpha = (splats.opacities[i] * torch.exp(-0.5 * ((d @ inverse) * d).sum(-1))).clamp(max=ALPHA_MAX)
        alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
        weight = alpha * clear * (clear > TRANSMITTANCE_MIN)
        image += weight[:, None] * splats.features[i]
        opacity += weight
        depth += weight * distance[i]
        clear = clear * (1 - alpha)
    return image, opacity, depth


def random_splats(count: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Splats:
    return Splats(
        means=(torch.rand(count, 3, generator=generator, dtype=dtype) - 0.5) * 0.8,
        scales=torch.rand(count, 3, generator=generator, dtype=dtype) * 0.08 + 0.01,
        quats=torch.nn.functional.normalize(torch.randn(count, 4, generator=generator, dtype=dtype), dim=-1),
        opacities=torch.rand(count, generator=generator, dtype=dtype) * 0.9 + 0.05,
        features=torch.rand(count, 4, generator=generator, dtype=dtype),
    )


def test_sparse_compositing_equals_the_dense_definition() -> None:
    generator = torch.Generator().manual_seed(0)
    splats = random_splats(60, generator)
    h, w = 20, 17
    K = torch.as_tensor(intrinsics(50, h, w))
    w2c = torch.as_tensor(np.linalg.inv(look_at(np.array([0.3, -0.4, 1.5]))))
    out = rasterize(splats, K, w2c, h, w)
    image, opacity, depth = dense_reference(splats, K, w2c, h, w)
    assert out.pairs > 200 and float(opacity.max()) > 0.9  # many overlapping splats, some pixels covered
    torch.testing.assert_close(out.image, image, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(out.opacity, opacity, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(out.depth, depth, atol=1e-9, rtol=1e-9)
    assert torch.allclose(out.weights.sum(), opacity.sum())


def test_gradients_match_finite_differences() -> None:
    generator = torch.Generator().manual_seed(3)
    base = random_splats(6, generator)
    K = torch.as_tensor(intrinsics(50, 10, 10))
    w2c = torch.as_tensor(np.linalg.inv(look_at(np.array([0.0, 0.3, 1.5]))))
    target = torch.rand(100, 4, generator=generator, dtype=torch.float64)

    def loss(means: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        out = rasterize(Splats(means, scales, base.quats, opacities, features), K, w2c, 10, 10)
        return ((out.image - target) ** 2).sum() + out.depth.sum() * 0.1

    inputs = tuple(t.clone().requires_grad_(True) for t in (base.means, base.scales, base.opacities, base.features))
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5)


def test_render_rays_refuses_a_whole_camera_field() -> None:
    with pytest.raises(SjcError, match="the gaussians field renders whole cameras; .* is not supported"):
        render_rays(field(init_splats=3), torch.zeros(4, 3), torch.tensor([[0.0, 0.0, 1.0]] * 4))


def test_render_camera_shapes_weights_and_background() -> None:
    splats = field(init_splats=50, bg_texture_size=4)
    out = render_view(splats, intrinsics(50, 16, 16), look_at(np.array([0.0, 0.0, 1.5])), 16, 16)
    assert out.image.shape == (3, 16, 16) and out.depth.shape == (16, 16) and out.opacity.shape == (16, 16)
    assert out.weights.ndim == 1 and out.sample_count == out.weights.numel() > 0
    assert torch.allclose(out.weights.sum(), out.opacity.sum(), rtol=1e-5)
    # grey features and a grey (zero) background: the picture is act(0) = 0 everywhere
    assert float(out.image.detach().abs().max()) < 1e-6
    empty = render_view(splats, intrinsics(50, 16, 16), look_at(np.array([0.0, 0.0, -1.5]), np.array([0.0, 0.0, -3.0])), 16, 16)
    assert float(empty.opacity.detach().max()) == 0.0 and torch.all(empty.depth == 10.0)


def step_with_grads(splats: GaussianField, optimizer: torch.optim.Optimizer) -> None:
    out = render_view(splats, intrinsics(50, 16, 16), look_at(np.array([0.0, 0.0, 1.5])), 16, 16)
    optimizer.zero_grad()
    (((out.image - 0.5) ** 2).sum() + ((out.opacity - 0.3) ** 2).sum()).backward()
    optimizer.step()


def test_densify_clones_splits_prunes_and_carries_adamax_moments() -> None:
    splats = field(init_splats=40, init_scale=0.03, densify_start=1, densify_every=2, grad_threshold=0.0,
                   split_scale=0.05, prune_opacity=0.05, max_splats=1000)
    optimizer = Adamax(splats.param_groups(0.1), lr=0.1)
    with torch.no_grad():
        splats.log_scales[:10] = np.log(0.2)  # ten large splats: they split
        splats.opacity_logits[10:15] = -10.0  # five nearly transparent ones: pruned
    params = {name: getattr(splats, name) for name in ("means", "quats", "opacity_logits")}
    step_with_grads(splats, optimizer)
    assert splats.after_step(1, optimizer) is False  # not a densify step: statistics only
    assert float(splats.grad_seen.sum()) > 0
    step_with_grads(splats, optimizer)
    # every splat was drawn but the five transparent ones (below 1/255 they reach no pixel)
    assert splats.grad_seen.tolist() == [1.0] * 10 + [0.0] * 5 + [1.0] * 25
    moments = optimizer.state[splats.means]["exp_avg"].clone()
    means_before, scales_before = splats.means.detach().clone(), splats.log_scales.detach().clone()
    assert splats.after_step(2, optimizer) is True
    assert all(getattr(splats, name) is param for name, param in params.items())  # same tensors in the groups
    # kept: 40 - 10 split - 5 pruned; added: clones of the 25 small seen ones, then 2 children per split one
    assert splats.splat_count == 25 + 25 + 20
    state = optimizer.state[splats.means]["exp_avg"]
    assert state.shape == splats.means.shape
    torch.testing.assert_close(state[:25], moments[15:])  # survivors keep their moments
    assert torch.all(state[25:] == 0)  # new splats start fresh
    torch.testing.assert_close(splats.means[:50], torch.cat([means_before[15:], means_before[15:]]))
    assert torch.all(splats.grad_sum == 0) and splats.grad_sum.shape == (splats.splat_count,)
    children = splats.log_scales[50:].detach()
    torch.testing.assert_close(children, scales_before[:10].repeat_interleave(2, 0) - np.log(1.6))
    offsets = (splats.means[50:].detach() - means_before[:10].repeat_interleave(2, 0)).norm(dim=-1)
    assert float(offsets.min()) > 0 and float(offsets.max()) < 1.0  # drawn inside the parent
    step_with_grads(splats, optimizer)  # the optimizer runs on the new sizes


def test_densification_stops_at_the_cap_and_zero_splats_stop_with_one_line(capsys) -> None:
    splats = field(init_splats=30, densify_start=1, densify_every=1, grad_threshold=0.0, max_splats=34,
                   prune_opacity=0.0)
    optimizer = Adamax(splats.param_groups(0.1), lr=0.1)
    for step in (1, 2):
        step_with_grads(splats, optimizer)
        splats.after_step(step, optimizer)
    assert splats.splat_count == 34
    notes = [line for line in capsys.readouterr().err.splitlines() if "max_splats" in line]
    assert notes == ["sjc: note: field.gaussians reached max_splats = 34 at step 1: splats are no longer added "
                     "(pruning goes on); raise field.max_splats for more detail"]  # once, not at every pass
    doomed = field(init_splats=5, densify_start=1, densify_every=1, prune_opacity=0.5, init_opacity=0.1)
    optimizer = Adamax(doomed.param_groups(0.1), lr=0.1)
    with pytest.raises(SjcError, match=r"^field.gaussians: every splat was pruned at step 1 ") as caught:
        doomed.after_step(1, optimizer)
    assert "\n" not in str(caught.value)


def test_ply_reads_back_with_the_standard_names_and_values(tmp_path: Path) -> None:
    splats = field(init_splats=7, sh_degree=1)
    with torch.no_grad():
        splats.features_dc.normal_(generator=torch.Generator().manual_seed(2))
        splats.features_rest.normal_(generator=torch.Generator().manual_seed(3))
        splats.quats.normal_(generator=torch.Generator().manual_seed(4))
    assert splats.export_files(tmp_path) == {"splats": "splats.ply"}
    header = (tmp_path / "splats.ply").read_bytes().split(b"end_header\n")[0].decode()
    assert header.startswith("ply\nformat binary_little_endian 1.0\nelement vertex 7\n")
    table = read_splat_ply(tmp_path / "splats.ply")
    assert list(table.dtype.names) == property_names(3)
    assert property_names(3)[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert [f"f_rest_{i}" for i in range(9)] == property_names(3)[9:18]
    np.testing.assert_array_equal(np.stack([table["x"], table["y"], table["z"]], 1), splats.means.detach().numpy())
    np.testing.assert_array_equal(table["opacity"], splats.opacity_logits.detach().numpy())
    np.testing.assert_array_equal(np.stack([table[f"scale_{i}"] for i in range(3)], 1), splats.log_scales.detach().numpy())
    quats = torch.nn.functional.normalize(splats.quats.detach(), dim=-1).numpy()
    np.testing.assert_allclose(np.stack([table[f"rot_{i}"] for i in range(4)], 1), quats, rtol=1e-6)
    # a viewer's colour, 0.5 + SH_C0 * f_dc, is the field's colour mapped to [0, 1]
    rgb = 0.5 + SH_C0 * np.stack([table[f"f_dc_{i}"] for i in range(3)], 1)
    colours = (splats.splats().features.detach().numpy() + 1) / 2
    np.testing.assert_allclose(rgb, colours, atol=1e-6)
    # f_rest is channel-major: red's three coefficients first
    slope = torch.sigmoid(splats.features_dc) * (1 - torch.sigmoid(splats.features_dc))
    red = (splats.features_rest[:, :, 0] * slope[:, :1]).detach().numpy()
    np.testing.assert_allclose(np.stack([table[f"f_rest_{i}"] for i in range(3)], 1), red, rtol=1e-5, atol=1e-7)


def test_density_and_features_at_points_sum_the_splats() -> None:
    splats = field(init_splats=30, init_scale=0.1)
    with torch.no_grad():
        splats.features_dc.normal_(generator=torch.Generator().manual_seed(5))
        splats.log_scales.add_(torch.rand(30, 3, generator=torch.Generator().manual_seed(7)) - 0.5)
        splats.quats.normal_(generator=torch.Generator().manual_seed(8))
    points = (torch.rand(5000, 3, generator=torch.Generator().manual_seed(6)) - 0.5) * 1.6
    active = splats.splats()
    precision = torch.linalg.inv(covariances(active.scales.double(), active.quats.double()))
    delta = (points[:, None, :] - active.means[None]).double()
    power = torch.einsum("pni,nij,pnj->pn", delta, precision, delta)
    # a ray through a splat's centre gathers -ln(1 - opacity) (through its mean scale)
    strength = -torch.log1p(-active.opacities.double()) / (np.sqrt(2 * np.pi) * active.scales.double().mean(-1))
    weight = strength * torch.exp(-0.5 * power) * (power <= 9)  # cut at 3 sigma
    with torch.no_grad():
        density = splats.density(points)
        colour = splats.features(points)
    assert int((weight > 0).any(1).sum()) > 1000  # most points meet some splat
    torch.testing.assert_close(density.double(), weight.sum(1), atol=1e-5, rtol=1e-4)
    inside = density > 0.05
    expected = (weight @ active.features.double()) / weight.sum(1, keepdim=True)
    torch.testing.assert_close(colour[inside].double(), expected[inside], atol=1e-4, rtol=1e-4)


def test_the_gaussian_recipes_are_their_voxel_recipes_on_splats() -> None:
    from sjc_core.recipes.recipe import load_recipe

    registry = load_registry()
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    for splat_name, voxel_name in [("demo-gaussians", "demo"), ("rose-gaussians", "rose")]:
        splat, voxel = (load_recipe(recipes / f"{name}.toml", registry) for name in (splat_name, voxel_name))
        assert splat.field.info.name == "gaussians" and splat.settings.name == splat_name
        assert splat.prior.options == voxel.prior.options and splat.settings.steps == voxel.settings.steps
        assert splat.settings.camera == voxel.settings.camera


def test_between_densify_passes_after_step_never_waits_for_the_device() -> None:
    from host_guard import forbid_host_sync

    splats = field(init_splats=20, densify_start=5, densify_every=5)
    optimizer = Adamax(splats.param_groups(0.1), lr=0.1)
    step_with_grads(splats, optimizer)
    with forbid_host_sync():
        assert splats.after_step(1, optimizer) is False
    assert float(splats.grad_sum.sum()) > 0


@pytest.mark.skipif(
    not torch.cuda.is_available() or __import__("importlib").util.find_spec("gsplat") is None,
    reason="gsplat parity needs a CUDA device and gsplat (pip install -e '.[gaussians-cuda]')",
)
def test_gsplat_draws_the_torch_rasterisers_picture() -> None:
    K, c2w = intrinsics(50, 32, 32), look_at(np.array([0.3, 0.4, 1.5]))
    pictures = []
    for backend in ("torch", "gsplat"):
        ctx = BuildContext(device=torch.device("cuda"), channels=3, value_range=(-1.0, 1.0), seed=1)
        splats = GaussianField(GaussianOptions(init_splats=300, init_opacity=0.5, backend=backend), ctx).cuda()
        with torch.no_grad():
            splats.features_dc.normal_(generator=torch.Generator("cuda").manual_seed(0))
        out = render_view(splats, K, c2w, 32, 32)
        pictures.append((out.image.detach().cpu(), out.opacity.detach().cpu()))
    (image_t, opacity_t), (image_g, opacity_g) = pictures
    # stated tolerance: gsplat's pixel-centre and cut-off rounding, per-pixel mean within 1e-2
    assert float((image_t - image_g).abs().mean()) < 1e-2 and float((opacity_t - opacity_g).abs().mean()) < 1e-2


def test_bad_gaussian_options_are_one_line_each() -> None:
    import subprocess
    import sys

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo-gaussians.toml"

    def errors(*sets: str) -> list[str]:
        args = [item for value in sets for item in ("--set", value)]
        result = subprocess.run([sys.executable, "-m", "sjc_core", "validate", str(recipe), *args],
                                check=False, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        return result.stderr.strip().splitlines()

    assert errors("field.init_splats=60000") == [f"error: {recipe}: field.init_splats: 60000 is above max_splats 20000"]
    if __import__("importlib").util.find_spec("gsplat") is None:  # where it is installed, the choice is valid
        (line,) = errors('field.backend="gsplat"')
        assert line.startswith(f"error: {recipe}: field.backend: 'gsplat' is not importable (")
