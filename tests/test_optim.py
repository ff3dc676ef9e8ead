"""sjc_core.training.optim.Adamax: torch.optim.Adamax's updates from one compiled pass per tensor."""

from __future__ import annotations

import copy

import pytest
import torch

from sjc_core.native import build as native
from sjc_core.training import optim
from sjc_core.training.optim import Adamax

SHAPES = [(7, 9, 5), (6, 5, 4, 4), (3,), ()]


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in SHAPES]


def _groups(params: list[torch.nn.Parameter]) -> list[dict]:
    return [{"params": params[:2]}, {"params": params[2:], "lr": 1e-3, "betas": (0.8, 0.99), "eps": 1e-6}]


def _run(optimizer_cls, steps: int = 6, seed: int = 0, **kwargs):  # type: ignore[no-untyped-def]
    params = _params(seed)
    opt = optimizer_cls(_groups(params), lr=0.05, **kwargs)
    gen = torch.Generator().manual_seed(100 + seed)
    for step in range(steps):
        for i, p in enumerate(params):
            # some steps without a gradient for one tensor, and an all-zero gradient
            p.grad = None if (step == 2 and i == 1) else torch.randn(p.shape, generator=gen) * (step % 3)
        opt.step()
    return params, opt


def _needs_library() -> None:
    if optim.fused_library() is None:
        pytest.skip("no C compiler: Adamax runs torch's own step")


def test_matches_torch_adamax():
    _needs_library()
    ours, _ = _run(Adamax)
    theirs, _ = _run(torch.optim.Adamax)
    lib = optim.fused_library()
    for a, b in zip(ours, theirs):
        if lib.sjc_adamax_fused_lerp():  # the same FMA as torch's vectorised lerp: the same bits
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_state_dicts_are_interchangeable_with_torch():
    _needs_library()
    params, ours = _run(Adamax, steps=3)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    theirs = torch.optim.Adamax(_groups(twin), lr=0.05)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))  # state tensors would be shared
    third = [torch.nn.Parameter(p.detach().clone()) for p in params]
    back = Adamax(_groups(third), lr=0.05)
    back.load_state_dict(copy.deepcopy(theirs.state_dict()))
    state = ours.state[params[0]]
    assert set(state) == {"step", "exp_avg", "exp_inf"} and state["step"].dtype == torch.float32
    assert float(state["step"]) == 3.0
    gen = torch.Generator().manual_seed(7)
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    for group_params, opt in ((params, ours), (twin, theirs), (third, back)):
        for p, g in zip(group_params, grads):
            p.grad = g.clone()
        opt.step()
    for a, b, c in zip(params, twin, third):
        assert torch.equal(a, c)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.1}, {"maximize": True}])
def test_options_outside_the_fused_loop_take_torchs_step(options, monkeypatch):
    """Plain Adamax goes through the C loop (else the equality tests would prove nothing);
    options it does not cover take torch's step."""
    if not options:
        _needs_library()
    calls = []
    real = native.run_calls
    monkeypatch.setattr(native, "run_calls", lambda *a: calls.append(a) or real(*a))
    ours, _ = _run(Adamax, **options)
    theirs, _ = _run(torch.optim.Adamax, **options)
    assert (calls != []) == (not options)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_native_disabled_falls_back(monkeypatch):
    monkeypatch.setenv("SJC_NATIVE", "0")
    assert optim.fused_library() is None
    ours, _ = _run(Adamax)
    theirs, _ = _run(torch.optim.Adamax)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_two_threads_split_big_tensors_and_agree(monkeypatch):
    _needs_library()
    monkeypatch.setattr(optim, "PARALLEL_MIN", 16)  # split even these small tensors
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, _ = _run(Adamax)
        torch.set_num_threads(2)
        two, _ = _run(Adamax)
    finally:
        torch.set_num_threads(old)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_nan_gradients_propagate_like_torch():
    _needs_library()
    p = torch.nn.Parameter(torch.ones(10))
    opt = Adamax([p], lr=0.1)
    p.grad = torch.full((10,), float("nan"))
    opt.step()
    assert torch.isnan(p).all() and torch.isnan(opt.state[p]["exp_inf"]).all()


def test_never_touched_blocks_are_skipped_without_changing_a_value():
    """Blocks with zero gradient and zero moment are skipped (voxels far from any surface);
    their parameters stay put and the rest follows torch exactly."""
    _needs_library()
    gen = torch.Generator().manual_seed(3)
    start = torch.randn(1000, generator=gen)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opts = Adamax([ours], lr=0.05), torch.optim.Adamax([theirs], lr=0.05)
    touched = torch.zeros(1000, dtype=torch.bool)
    touched[130:470] = True  # whole blocks of 64 untouched on both sides, and partial ones
    for step in range(5):
        grad = torch.where(touched, torch.randn(1000, generator=gen), torch.zeros(1000))
        for p, opt in zip((ours, theirs), opts):
            p.grad = grad.clone()
            opt.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    assert torch.equal(ours[~touched], start[~touched])
    assert torch.equal(opts[0].state[ours]["exp_inf"], opts[1].state[theirs]["exp_inf"])
