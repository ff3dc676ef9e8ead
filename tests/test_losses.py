"""The emptiness and centre-depth regularisers: values, gradients, schedule, options."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sjc_core.contracts import BuildContext, RenderOutput
from sjc_core.errors import SjcError
from sjc_core.plugins import load_registry
from sjc_core.recipes.recipe import validate_recipe
from sjc_plugins.losses.center_depth import center_mask


def registry():  # type: ignore[no-untyped-def]
    return load_registry(warn=lambda _: None)


def make_loss(name: str, **options: float):  # type: ignore[no-untyped-def]
    """Build a loss through its installed entry point, as the engine does."""
    info = registry().get("losses", name)
    return info.factory(info.options.model_validate(options), BuildContext())


def render_with(weights: torch.Tensor | None = None, depth: torch.Tensor | None = None, sample_count: int = 0) -> RenderOutput:
    weights = torch.zeros(0) if weights is None else weights
    depth = torch.zeros(64, 64) if depth is None else depth
    return RenderOutput(
        image=torch.zeros(3, *depth.shape),
        depth=depth,
        opacity=torch.zeros(depth.shape),
        weights=weights,
        sample_count=sample_count or weights.numel(),
    )


# -- emptiness ------------------------------------------------------------------------


def test_emptiness_value_and_schedule() -> None:
    loss = make_loss("emptiness")  # defaults: weight 1e4, scale 10, step 0.5, x20
    weights = torch.tensor([0.0, 0.05, 0.5, 1.0])
    hand = 1e4 * (math.log(1) + math.log(1.5) + math.log(6) + math.log(11)) / 10  # 10 samples in all
    render = render_with(weights, sample_count=10)
    assert loss(render, 0.0).item() == pytest.approx(hand, rel=1e-6)
    assert loss(render, 0.4999).item() == pytest.approx(hand, rel=1e-6)
    assert loss(render, 0.5).item() == pytest.approx(20 * hand, rel=1e-6)
    assert loss(render, 0.99).item() == pytest.approx(20 * hand, rel=1e-6)
    custom = make_loss("emptiness", weight=2.0, scale=3.0, step_fraction=0.25, multiplier=5.0)
    expected = 2.0 * sum(math.log1p(3 * w) for w in weights.tolist()) / 10
    assert custom(render, 0.2).item() == pytest.approx(expected, rel=1e-6)
    assert custom(render, 0.25).item() == pytest.approx(5 * expected, rel=1e-6)


def test_emptiness_matches_the_reference_mean_over_all_samples() -> None:
    """The reference averages over every sample of the bundle, out-of-box zeros included."""
    gen = torch.Generator().manual_seed(0)
    every = torch.rand(4096 * 20, generator=gen) * (torch.rand(4096 * 20, generator=gen) < 0.3)
    inside = every[every > 0]  # what a renderer that skips empty samples reports
    loss = make_loss("emptiness")
    ours = loss(render_with(inside, sample_count=every.numel()), 0.1)
    reference = 1e4 * torch.log(1 + 10 * every).mean()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)


def test_emptiness_gradient() -> None:
    weights = torch.tensor([0.0, 0.2, 0.7], requires_grad=True)
    loss = make_loss("emptiness", weight=3.0, scale=10.0)
    loss(render_with(weights, sample_count=6), 0.0).backward()
    expected = 3.0 * 10.0 / (1 + 10.0 * weights.detach()) / 6
    torch.testing.assert_close(weights.grad, expected)


# -- centre depth ---------------------------------------------------------------------


def intended(depth: torch.Tensor, weight: float) -> torch.Tensor:
    """-weight * log(border_mean - centre_mean) with the reference's 7-pixel frame."""
    centre = depth[7:-7, 7:-7]
    border_mean = (depth.sum() - centre.sum()) / (64 * 64 - 50 * 50)
    return -weight * torch.log(border_mean - centre.mean())


def test_center_mask_is_the_reference_window() -> None:
    mask = center_mask(64, 64, 50 / 64)
    reference = torch.zeros(64, 64, dtype=torch.bool)
    reference[7:-7, 7:-7] = True
    assert torch.equal(mask, reference)
    assert int(center_mask(32, 48, 0.5).sum()) == 16 * 24


def test_center_depth_value_and_gradient_match_the_intended_loss() -> None:
    depth = torch.full((64, 64), 10.0)  # background at 10
    depth[20:44, 16:48] = 1.5  # an object in the middle
    depth = depth + 0.1 * torch.rand(64, 64, generator=torch.Generator().manual_seed(0))
    loss = make_loss("center-depth", weight=10.0)
    ours_in = depth.clone().requires_grad_(True)
    value = loss(render_with(depth=ours_in), 0.3)
    value.backward()
    ref_in = depth.clone().requires_grad_(True)
    expected = intended(ref_in, 10.0)
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(ours_in.grad, ref_in.grad)
    # hand check of the number: centre mean and border mean of the same map
    centre = depth[7:57, 7:57].mean().item()
    border = (depth.sum().item() - depth[7:57, 7:57].sum().item()) / (4096 - 2500)
    assert value.item() == pytest.approx(-10.0 * math.log(border - centre), rel=1e-5)


def test_reference_gradient_agrees_where_it_is_right_by_accident() -> None:
    """-log(centre - border) has NaN value but the same gradient as ours when border > centre."""
    depth = torch.full((64, 64), 10.0)
    depth[10:54, 10:54] = 2.0
    theirs_in = depth.clone().requires_grad_(True)
    centre = theirs_in[7:-7, 7:-7]
    border = (theirs_in.sum() - centre.sum()) / (64 * 64 - 50 * 50)
    theirs = -10.0 * torch.log(centre.mean() - border + 1e-12)
    theirs.backward()
    assert math.isnan(theirs.item())
    ours_in = depth.clone().requires_grad_(True)
    ours = make_loss("center-depth", weight=10.0)(render_with(depth=ours_in), 0.0)
    ours.backward()
    assert math.isfinite(ours.item())
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("centre_value", [10.0, 12.0, 50.0])
def test_center_depth_is_finite_when_the_centre_is_farther(centre_value: float) -> None:
    """Centre as far as or farther than the border: finite value, constant push of -weight/eps."""
    epsilon = 1e-3
    depth = torch.full((64, 64), 10.0)
    depth[7:57, 7:57] = centre_value
    depth.requires_grad_(True)
    loss = make_loss("center-depth", weight=4.0, epsilon=epsilon)
    value = loss(render_with(depth=depth), 0.0)
    value.backward()
    gap = 10.0 - centre_value
    assert value.item() == pytest.approx(-4.0 * (math.log(epsilon) + (gap - epsilon) / epsilon), rel=1e-5)
    assert torch.isfinite(depth.grad).all()
    # d loss / d depth = -weight/eps * d gap / d depth: +1/2500 per centre pixel, -1/1596 per border pixel
    scale = 4.0 / epsilon
    assert depth.grad[32, 32].item() == pytest.approx(scale / 2500, rel=1e-4)
    assert depth.grad[0, 0].item() == pytest.approx(-scale / 1596, rel=1e-4)


def test_center_depth_is_continuous_and_c1_at_epsilon() -> None:
    from sjc_plugins.losses.center_depth import log_barrier

    epsilon = 1e-2
    for gap in (epsilon * (1 - 1e-6), epsilon * (1 + 1e-6)):
        x = torch.tensor(gap, dtype=torch.float64, requires_grad=True)
        y = log_barrier(x, epsilon)
        y.backward()
        assert y.item() == pytest.approx(-math.log(epsilon), rel=1e-5)
        assert x.grad.item() == pytest.approx(-1 / epsilon, rel=1e-5)


# -- options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"name": "emptiness", "weight": -1.0}, "losses.0.weight: Input should be greater than or equal to 0"),
        ({"name": "emptiness", "step_fraction": 1.5}, "losses.0.step_fraction: Input should be less than or equal to 1"),
        ({"name": "emptiness", "scale": 0}, "losses.0.scale: Input should be greater than 0"),
        ({"name": "emptiness", "multiplier": -2}, "losses.0.multiplier: Input should be greater than or equal to 0"),
        ({"name": "emptiness", "wieght": 1.0}, "losses.0.wieght: unknown key (did you mean 'weight'?)"),
        ({"name": "center-depth", "weight": -10}, "losses.0.weight: Input should be greater than or equal to 0"),
        ({"name": "center-depth", "center_fraction": 1.0}, "losses.0.center_fraction: Input should be less than 1"),
        ({"name": "center-depth", "epsilon": 0}, "losses.0.epsilon: Input should be greater than 0"),
    ],
)
def test_bad_options_are_one_line_errors(table: dict, message: str, tmp_path: Path) -> None:
    raw = {"prior": {"name": "empirical", "images": "x"}, "losses": [table]}
    with pytest.raises(SjcError) as info:
        validate_recipe(raw, registry(), base_dir=tmp_path, source="r.toml")
    assert any(line.startswith(f"r.toml: {message}") for line in info.value.problems), info.value.problems


def test_cli_rejects_a_negative_weight(tmp_path: Path, run_sjc) -> None:  # type: ignore[no-untyped-def]
    recipe = tmp_path / "r.toml"
    recipe.write_text('[prior]\nname = "empirical"\nimages = "x"\n\n[[losses]]\nname = "center-depth"\nweight = -1\n')
    code, out, err = run_sjc("validate", recipe)
    assert code == 2, (out, err)
    assert "losses.0.weight: Input should be greater than or equal to 0" in err
    assert "Traceback" not in err
