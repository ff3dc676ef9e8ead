"""Every render path takes any loss a plugin can build from a render.

Whatever scalar is made from the image, the weights, the depth and the opacity, in any
combination and through one or several backward calls, the voxel field's fused paths
(native kernel, torch ops in the CPU's compact layout and in the GPUs' dense layout) give
the gradients of the plain Field-contract path.
"""

from __future__ import annotations

import math

import pytest
import torch

from sjc_core.render.cameras import intrinsics, look_at
from sjc_core.render.view import render_view
from sjc_plugins.fields._voxel_native import kernel_or_reason
from sjc_plugins.fields.voxel import VoxelField, VoxelOptions

SIZE = 16


def make_field(backend: str, activation: str = "identity") -> VoxelField:
    options = VoxelOptions(grid_size=20, backend=backend, feature_activation=activation)
    field = VoxelField(options, channels=3, seed=3)
    c = (torch.arange(20, dtype=torch.float64) + 0.5) / 10 - 1
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    r2 = (x - 0.1) ** 2 + y**2 + (z + 0.15) ** 2
    with torch.no_grad():  # a blob with a carved core: some samples fall under the threshold
        field.density_grid.copy_((14 * torch.exp(-r2 / 0.18) - 9 * torch.exp(-r2 / 0.02) - 8).float())
        field.d_scale.fill_(0.2)
    return field


def _render(field: VoxelField):
    pose = look_at([1.2, 0.5, 1.1])
    return render_view(field, intrinsics(55.0, SIZE, SIZE), pose, SIZE, SIZE)


def _upstream(channels: int) -> torch.Tensor:
    h = torch.arange(SIZE, dtype=torch.float32)
    return torch.stack([torch.sin(0.4 * h[:, None] + 0.9 * h[None, :] + c) for c in range(channels)])


def apply_loss(field: VoxelField, pattern: str) -> None:
    out = _render(field)
    g = _upstream(out.image.shape[0])
    emptiness = 1e2 * torch.log1p(10 * out.weights).sum() / out.sample_count
    if pattern == "image_sum":
        out.image.sum().backward()
    elif pattern == "weights_only":
        emptiness.backward()
    elif pattern == "depth_only":
        out.depth.square().mean().backward()
    elif pattern == "opacity_only":
        out.opacity.sum().backward()
    elif pattern == "combination":
        (-(g * out.image).sum() + emptiness + 0.3 * out.depth.mean() - out.opacity.mean()).backward()
    elif pattern == "two_backward":  # the reference's own pattern
        out.image.backward(-g, retain_graph=True)
        emptiness.backward()
    elif pattern == "image_transposed_grad":  # a non-contiguous upstream gradient
        out.image.permute(1, 2, 0).backward(g.permute(1, 2, 0).contiguous().transpose(0, 1).transpose(0, 1))
    else:  # pragma: no cover - a typo in the parametrisation
        raise ValueError(pattern)


def gradients(field: VoxelField) -> dict[str, torch.Tensor]:
    """Every parameter's gradient; an untouched one (None) counts as zeros."""
    names = ("density_grid", "feature_grid", "d_scale", "bg")
    params = {name: getattr(field, name) for name in names}
    return {name: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for name, p in params.items()}


PATTERNS = ["image_sum", "weights_only", "depth_only", "opacity_only", "combination", "two_backward", "image_transposed_grad"]
BACKENDS = ["native", "torch", "torch-dense", "generic-dense"]


@pytest.mark.parametrize("activation", ["identity", "2*sigmoid-1"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_backend_gives_the_generic_gradients(pattern, backend, activation, monkeypatch):
    reference = make_field("generic", activation)
    apply_loss(reference, pattern)
    expected = gradients(reference)
    if backend == "native" and kernel_or_reason()[0] is None:
        pytest.skip(f"native kernel unavailable: {kernel_or_reason()[1]}")
    if backend.endswith("-dense"):
        monkeypatch.setattr("sjc_core.render.samples.compact_samples", lambda device: False)
    field = make_field(backend.removesuffix("-dense"), activation)
    assert field.backend == backend.removesuffix("-dense")
    apply_loss(field, pattern)
    got = gradients(field)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        scale = max(float(value.abs().max()), 1e-12)
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=2e-5 * scale, msg=f"{name} ({pattern}, {backend})")
    # the loss reached the grids at all (a path that drops a term would give zeros)
    assert float(got["density_grid"].abs().sum()) > 0
    if pattern in ("image_sum", "combination", "two_backward", "image_transposed_grad"):
        assert float(got["feature_grid"].abs().sum()) > 0
        assert math.isfinite(float(got["d_scale"]))


def test_the_case_has_sub_threshold_samples():
    """The field above exercises the weight threshold (some in-box samples carry no colour)."""
    out = _render(make_field("generic"))
    w = out.weights.detach()
    assert 0 < int((w > 1e-4).sum()) < int((w > 0).sum())


def _tensors_in(value) -> int:
    if torch.is_tensor(value):
        return 1
    if isinstance(value, dict):
        return sum(_tensors_in(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensors_in(v) for v in value)
    return sum(_tensors_in(v) for v in vars(value).values()) if hasattr(value, "__dataclass_fields__") else 0


@pytest.mark.parametrize("layout", ["compact", "dense"])
def test_torch_node_frees_its_tensors_after_the_backward(layout, monkeypatch):
    """A run keeps several steps' outputs until it reads them back: their render nodes must
    not hold the samples' corners or features once the backward has run."""
    if layout == "dense":
        monkeypatch.setattr("sjc_core.render.samples.compact_samples", lambda device: False)
    field = make_field("torch")
    out = _render(field)
    node = out.weights.grad_fn
    while node is not None and "TorchVoxelRender" not in type(node).__name__:
        node = node.next_functions[0][0] if node.next_functions else None
    assert node is not None
    assert _tensors_in(vars(node)) == 0  # every tensor is a saved tensor, none a plain attribute
    (out.image.sum() + out.weights.sum()).backward()
    with pytest.raises(RuntimeError):
        node.saved_tensors  # freed by autograd


@pytest.mark.parametrize("layout", ["compact", "dense"])
@pytest.mark.parametrize("pattern", ["weights_only", "depth_only", "opacity_only", "combination", "two_backward"])
def test_hashgrid_fused_path_gives_the_generic_gradients(pattern, layout, monkeypatch):
    """The hash grid's fused foreground takes the same losses as its plain Field-contract path."""
    from sjc_core.contracts import BuildContext
    from sjc_plugins.fields.hashgrid import HashGridField, HashGridOptions

    if layout == "dense":
        monkeypatch.setattr("sjc_core.render.samples.compact_samples", lambda device: False)
    options = HashGridOptions(grid_size=20, levels=4, log2_table_size=10, max_resolution=32, backend="torch")
    grads = []
    for fused in (True, False):
        field = HashGridField(options, BuildContext(channels=3, seed=5))
        with torch.no_grad():
            field.density_out.bias.fill_(-1.0)
            field.encoding.table.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(2))
        if not fused:
            field.render_foreground = lambda bundle: None  # declines: the renderer's generic path
        apply_loss(field, pattern)
        grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in field.parameters()])
    for fused_grad, generic_grad in zip(*grads):
        scale = max(float(generic_grad.abs().max()), 1e-12)
        torch.testing.assert_close(fused_grad, generic_grad, rtol=1e-4, atol=2e-5 * scale)
    assert any(float(g.abs().sum()) > 0 for g in grads[0])
