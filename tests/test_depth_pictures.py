"""Depth panels people can read: the surface's depth (not a mix with the background), one
scale for every view of a turntable or an evaluation, and a key of near and far under it."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from sjc_core.contracts import BuildContext
from sjc_core.files.pictures import LEGEND_HEIGHT
from sjc_core.fit.datasets import PosedImages
from sjc_core.fit.views import VIDEO_MIN_SIZE, evaluate
from sjc_core.plugins import load_registry
from sjc_core.render.cameras import look_at
from sjc_core.runs.turntable import depth_panel, depth_range

GRID = 32
SIZE = 32


def soft_ball_field() -> torch.nn.Module:
    """A voxel field holding a ball of radius 0.6 whose edge thins over about two voxels, as
    a fitted field's does (the soft edge is what saturated the old depth pictures)."""
    info = load_registry().get("fields", "voxel")
    field = info.factory(
        info.options.model_validate({"grid_size": GRID}),
        BuildContext(device=torch.device("cpu"), channels=3, value_range=(-1.0, 1.0)),
    )
    centres = -1 + (torch.arange(GRID, dtype=torch.float32) + 0.5) * (2 / GRID)
    z, y, x = torch.meshgrid(centres, centres, centres, indexing="ij")
    sigma = (30 * (0.6 - torch.sqrt(x**2 + y**2 + z**2)) / (2 / GRID)).clamp(0.0, 30.0)
    with torch.no_grad():
        raw = torch.where(sigma > 20, sigma, torch.log(torch.expm1(sigma.clamp(min=1e-4))))
        field.density_grid.copy_(raw - field.density_shift)
        field.feature_grid.zero_()
    return field


def posed(radii: list[float]) -> PosedImages:
    poses = np.stack([look_at(np.array([0.0, 0.3, r])) for r in radii])
    return PosedImages(
        images=np.zeros((len(radii), SIZE, SIZE, 3), np.float32), c2w=poses, fov_deg=50.0,
        names=[f"v{i}.png" for i in range(len(radii))], source=Path("transforms.json"),
    )


def depth_half(picture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the depth panel's grey levels, the key under it) of a ground truth | render | depth picture."""
    width = picture.shape[1] // 3
    return picture[:-LEGEND_HEIGHT, 2 * width :, 0], picture[-LEGEND_HEIGHT:, 2 * width :, 0]


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    folder = tmp_path_factory.mktemp("heldout")
    with torch.no_grad():
        evaluate(soft_ball_field(), posed([1.6, 2.6]), subpixel=1, near=0.0, folder=folder)
    return [iio.imread(path)[..., :3] for path in sorted(folder.glob("*.png"))]


def test_fit_depth_panels_show_the_shape_not_a_white_silhouette(evaluation: list[np.ndarray]) -> None:
    near_view = evaluation[0]
    assert near_view.shape[0] == VIDEO_MIN_SIZE + LEGEND_HEIGHT
    panel, _ = depth_half(near_view)
    ball = panel[panel > 0]
    assert ball.size > 0.15 * panel.size
    assert len(np.unique(ball)) >= 20  # shading from the nose of the ball to its rim
    assert np.mean(ball == 255) < 0.2  # not a saturated silhouette


def test_fit_evaluation_uses_one_depth_scale_with_a_key(evaluation: list[np.ndarray]) -> None:
    (near_panel, near_key), (far_panel, far_key) = (depth_half(p) for p in evaluation)
    # the camera a metre further back sees the ball darker: one scale for both views
    assert near_panel[near_panel > 0].mean() > far_panel[far_panel > 0].mean() + 60
    np.testing.assert_array_equal(near_key, far_key)  # the same key under both
    ramp = near_key[LEGEND_HEIGHT - 2]  # below the labels: bright (near) on the left, dark (far) on the right
    assert ramp[2] > 200 and ramp[-3] < 55 and np.all(np.diff(ramp.astype(int)) <= 1)


def test_one_range_over_frames_keeps_a_distance_one_shade() -> None:
    opaque = torch.ones(4, 4)
    near_frame, far_frame = torch.full((4, 4), 1.0), torch.full((4, 4), 2.0)
    shared = depth_range([near_frame, far_frame], [opaque, opaque])
    assert shared == pytest.approx((1.0, 2.0))
    assert depth_panel(near_frame, opaque, shared).min() == 255
    assert depth_panel(far_frame, opaque, shared).max() == 0
    # on its own a flat frame has no range worth spreading: each alone would be all bright
    assert depth_panel(far_frame, opaque).min() == 255
