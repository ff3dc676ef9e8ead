"""Numerical parity with the reference voxel renderer (see tests/data/parity/README.md).

The case file holds the reference's rays for four cameras, and for camera 0 and three
density scenarios its image, depth, opacity, every sample weight, the emptiness loss and
summaries of the gradients after one SJC surrogate step. The 100^3 parameters are rebuilt
here from the README's formulas (float64, rounded once to float32).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from sjc_core.contracts import BuildContext
from sjc_core.plugins import load_registry
from sjc_core.render.rays import camera_rays
from sjc_core.render.samples import make_bundle
from sjc_core.render.spans import box_intersect, host_spans, k_for_spans
from sjc_core.render.view import render_rays, render_view

SCENARIOS = ("init", "blob", "blob_carved")


# The authors' renderer's outputs (and their README), kept inside the repository so that
# a plain clone runs these tests; the same files as shared/parity/ of the project.
PARITY_CASE = Path(__file__).resolve().parent / "data" / "parity" / "voxel_render_case.npz"


@pytest.fixture(scope="module")
def case() -> dict[str, np.ndarray]:
    with np.load(PARITY_CASE, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _centres(n: int = 100) -> np.ndarray:
    return -1 + (np.arange(n) + 0.5) * 0.02


@functools.lru_cache(maxsize=None)
def rebuild_parameters(scenario: str) -> dict[str, np.ndarray]:
    """The README's section-2 formulas in float64, rounded once to float32 (do not mutate).

    Grids in the reference layout: density [1,1,Z,Y,X], color [1,4,Z,Y,X]."""
    c = _centres()
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r2 = x**2 + y**2 + z**2
    density = {
        "init": np.zeros_like(r2),
        "blob": 5 * np.exp(-r2 / (2 * 0.5**2)),
        "blob_carved": 10 * np.exp(-r2 / (2 * 0.3**2)) - 5,
    }[scenario]
    color = np.stack([np.sin(3 * x + ch) * np.cos(2 * y - ch) + 0.5 * z * (ch - 1.5) for ch in range(4)])
    i, j = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    bg = np.stack([0.25 * (ch + 1) * np.cos(i + 2 * j + ch) for ch in range(4)])
    h, w = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    g = np.stack([0.1 * np.sin(0.3 * h + 0.7 * w + ch) for ch in range(4)])
    return {
        "density": density[None, None].astype(np.float32),
        "color": color[None].astype(np.float32),
        "bg": bg[None].astype(np.float32),
        "d_scale": np.float32({"init": 0.0, "blob": 0.0, "blob_carved": 0.3}[scenario]),
        "upstream_grad": g[None].astype(np.float32),
    }


@functools.lru_cache(maxsize=1)
def voxel_plugin():  # type: ignore[no-untyped-def]
    """The voxel field as the entry-point registry provides it."""
    return load_registry().get("fields", "voxel")


def make_field(scenario: str, backend: str = "auto") -> torch.nn.Module:
    """The voxel plugin (through the registry) loaded with the scenario's parameters."""
    info = voxel_plugin()
    options = info.options(backend=backend, init_features=0.0)  # every value is set below
    field = info.factory(options, BuildContext(channels=4, value_range=None))
    p = rebuild_parameters(scenario)
    with torch.no_grad():
        field.density_grid.copy_(torch.from_numpy(p["density"][0, 0]))
        field.feature_grid.copy_(torch.from_numpy(p["color"][0]).permute(1, 2, 3, 0))
        field.bg.copy_(torch.from_numpy(p["bg"]))
        field.d_scale.fill_(float(p["d_scale"]))
    return field


def test_reconstructed_parameters_match_the_stored_samples(case):
    s0, n = int(case["subcube_start"]), int(case["subcube_size"])
    cube = (slice(None), slice(s0, s0 + n), slice(s0, s0 + n), slice(s0, s0 + n))
    for scenario in SCENARIOS:
        p = rebuild_parameters(scenario)
        np.testing.assert_array_equal(p["density"][0][cube], case[f"{scenario}_density_param_subcube"])
        np.testing.assert_array_equal(p["color"][0][cube], case["color_param_subcube"])
        assert p["d_scale"] == case[f"{scenario}_d_scale"]
        np.testing.assert_array_equal(p["bg"], case["bg"])
        np.testing.assert_array_equal(p["upstream_grad"], case["upstream_grad"])


@pytest.mark.parametrize("cam", range(4))
def test_rays_t_and_sample_count_match(case, cam):
    K, pose = case[f"cam{cam}_K"], case[f"cam{cam}_pose"]
    ro, rd = camera_rays(K, pose, 64, 64)
    assert ro.dtype == rd.dtype == torch.float32 and ro.shape == rd.shape == (4096, 3)
    assert np.abs(ro.numpy() - case[f"cam{cam}_ro"]).max() <= 1e-6
    assert np.abs(rd.numpy() - case[f"cam{cam}_rd"]).max() <= 1e-6
    aabb = torch.from_numpy(case["aabb"])
    t_min, t_max = box_intersect(ro, rd, aabb)
    assert np.abs(t_min.numpy() - case[f"cam{cam}_t_min"]).max() <= 2e-6
    assert np.abs(t_max.numpy() - case[f"cam{cam}_t_max"]).max() <= 2e-6
    bundle = make_bundle(ro, rd, t_min, t_max, float(case["step_size"]))
    assert bundle.k == int(case[f"cam{cam}_num_samples"])
    # the host's own k (render_view's, computed without touching the device) agrees
    spans = host_spans(K, pose, 64, 64, 1, case["aabb"].astype(np.float64))
    assert k_for_spans(spans, float(case["step_size"])) == bundle.k
    assert np.abs(spans - (case[f"cam{cam}_t_max"] - case[f"cam{cam}_t_min"])).max() <= 4e-6
    if cam == 3:  # the eye is inside the box: every ray starts at t = 0
        assert (t_min == 0).all()


def _block_sums(grad: np.ndarray) -> np.ndarray:
    """[c, 100, 100, 100] -> [c, 10, 10, 10] sums in float64."""
    g = grad.astype(np.float64).reshape(grad.shape[0], 10, 10, 10, 10, 10, 10)
    return g.sum(axis=(2, 4, 6))


def _close(a: np.ndarray, b: np.ndarray, rel: float, abs_of_max: float) -> None:
    bound = rel * np.abs(b) + abs_of_max * np.abs(b).max()
    worst = np.abs(a - b) - bound
    assert worst.max() <= 0, f"exceeds tolerance by {worst.max():.3g}"


@pytest.fixture
def dense_layout(monkeypatch):
    """The layout GPUs use (every sample, masks, no data-dependent shapes), on the CPU."""
    monkeypatch.setattr("sjc_core.render.samples.compact_samples", lambda device: False)


@pytest.mark.parametrize("backend", ["auto", "torch", "generic", "torch-dense", "generic-dense"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_render_and_gradients_match_reference(case, scenario, backend, request):
    if backend.endswith("-dense"):
        request.getfixturevalue("dense_layout")
        backend = backend.removesuffix("-dense")
    field = make_field(scenario, backend)
    if backend == "auto":
        assert field.backend in ("native", "torch")
    ro, rd = (torch.from_numpy(case[f"cam0_{key}"]) for key in ("ro", "rd"))
    t_min, t_max = (torch.from_numpy(case[f"cam0_{key}"]) for key in ("t_min", "t_max"))
    out = render_rays(field, ro, rd, t_min, t_max)
    k = int(case["num_samples"])
    assert out.weights.shape == (4096, k) and out.sample_count == k * 4096

    image = out.image.t().reshape(1, 4, 64, 64)
    weights = out.weights.detach().t().numpy()  # the reference's [k, n]
    ref_w = case[f"{scenario}_weights"]
    assert np.abs(weights - ref_w).max() <= 1e-6
    assert np.abs(out.opacity.detach().view(64, 64).numpy() - case[f"{scenario}_opacity"]).max() <= 1e-5
    assert np.abs(out.depth.detach().view(64, 64).numpy() - case[f"{scenario}_depth"]).max() <= 1e-4

    # colour: a hard threshold decides which samples carry colour; a few may flip
    diff = np.abs(image.detach().numpy() - case[f"{scenario}_rgbs"])
    assert diff.max() <= 3e-4
    assert (diff <= 2e-5).mean() >= 0.995
    flipped = ((weights > 1e-4) != (ref_w > 1e-4)).any(axis=0).reshape(64, 64)
    assert diff[0][:, ~flipped].max() <= 2e-5
    above = int((out.weights > 1e-4).sum())
    assert abs(above - int(case[f"{scenario}_num_above_threshold"])) <= 8

    emptiness = 1e4 * torch.log1p(10 * out.weights).sum() / out.sample_count
    ref_e = float(case[f"{scenario}_emptiness_loss"])
    assert abs(emptiness.item() - ref_e) <= 1e-4 * abs(ref_e)

    g = torch.from_numpy(rebuild_parameters(scenario)["upstream_grad"])
    loss = -(g * image).sum() + emptiness
    loss.backward()  # one backward for the whole surrogate

    grad_bg = field.bg.grad.numpy()
    ref_bg = case[f"{scenario}_grad_bg"]
    assert np.abs(grad_bg - ref_bg).max() <= 1e-4 * np.abs(ref_bg).max()
    ref_ds = float(case[f"{scenario}_grad_d_scale"])
    assert abs(field.d_scale.grad.item() - ref_ds) <= 1e-4 * abs(ref_ds) + 1e-6

    grads = {
        "density": field.density_grid.grad[None].numpy(),
        "color": field.feature_grid.grad.permute(3, 0, 1, 2).contiguous().numpy(),
    }
    s0, n = int(case["subcube_start"]), int(case["subcube_size"])
    for name, value in grads.items():
        _close(_block_sums(value), case[f"{scenario}_grad_{name}_blocksum"], 1e-3, 1e-4)
        sub = value[:, s0 : s0 + n, s0 : s0 + n, s0 : s0 + n]
        _close(sub, case[f"{scenario}_grad_{name}_subcube"], 1e-3, 1e-4)
        norm = np.sqrt((value.astype(np.float64) ** 2).sum())
        ref_norm = float(case[f"{scenario}_grad_{name}_norm"])
        assert abs(norm - ref_norm) <= 1e-4 * ref_norm


@pytest.mark.parametrize("layout", ["compact", "dense"])
def test_render_view_reproduces_the_stored_render(case, layout, request):
    """The camera entry point (rays from K and pose, on the field's device) gives the same picture."""
    if layout == "dense":
        request.getfixturevalue("dense_layout")
    field = make_field("blob", "torch" if layout == "dense" else "auto")
    out = render_view(field, case["cam0_K"], case["cam0_pose"], 64, 64)
    assert out.image.shape == (4, 64, 64) and out.depth.shape == (64, 64)
    assert np.abs(out.image.detach().numpy() - case["blob_rgbs"][0]).max() <= 3e-4
    assert np.abs(out.depth.detach().numpy() - case["blob_depth"]).max() <= 1e-4
    assert np.abs(out.opacity.detach().numpy() - case["blob_opacity"]).max() <= 1e-5
