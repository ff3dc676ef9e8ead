"""sjc fit's distortion loss: mip-NeRF 360's formula (brute force over sample pairs), and the flag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from sjc_core.fit.regularisers import distortion


def brute_force(weights: torch.Tensor, spacing: float) -> torch.Tensor:
    """Eq. 15 of mip-NeRF 360 for samples ``spacing`` apart: sum_ij w_i w_j |s_i - s_j| + 1/3 sum_i w_i^2 d_i."""
    centres = spacing * (torch.arange(weights.shape[1], dtype=weights.dtype) + 0.5)
    pairs = (weights[:, :, None] * weights[:, None, :] * (centres[:, None] - centres[None, :]).abs()).sum(dim=(1, 2))
    return (pairs + (weights**2).sum(dim=1) * spacing / 3).mean()


def test_distortion_equals_the_pairwise_formula() -> None:
    weights = torch.rand(6, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 10
    torch.testing.assert_close(distortion(weights, 0.02), brute_force(weights, 0.02), rtol=1e-12, atol=0)


def test_one_surface_costs_less_than_a_haze_of_the_same_opacity() -> None:
    surface = torch.zeros(1, 50)
    surface[0, 30] = 0.9
    haze = torch.zeros(1, 50)
    haze[0, 5:50:5] = 0.1  # 0.9 in total, spread along the ray
    assert distortion(surface, 0.01) < 0.2 * distortion(haze, 0.01)
    weights = torch.rand(3, 9, requires_grad=True)
    distortion(weights, 0.1).backward()
    assert torch.isfinite(weights.grad).all()


def test_negative_distortion_flag_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sjc_core", "fit", str(tmp_path), "--out", str(tmp_path / "out"), "--distortion", "-1"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--distortion" in lines[0], done.stderr
