"""Pictures with alpha: the loader keeps it, and ``sjc fit`` uses it against floaters
(opacity supervision, ``alpha_weight``), measured as the opacity it paints where the
held-out pictures are transparent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from sjc_core.fit.datasets import load_posed_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("make_independent_suite", ROOT / "scripts" / "make_independent_suite.py")
    maker = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_independent_suite", maker)
    spec.loader.exec_module(maker)
    out = tmp_path_factory.mktemp("alpha")
    maker.make_object(maker.OBJECTS["vase"], out / "vase", train=12, test=4, size=24)  # RGBA
    maker.make_object(maker.OBJECTS["rock"], out / "rock", train=2, test=1, size=24)  # opaque backdrop
    return out


def test_loader_keeps_alpha_and_composites_the_colour(objects: Path) -> None:
    data = load_posed_images(objects / "vase", "train", background=(0.2, 0.4, 0.6))
    assert data.alphas is not None and data.alphas.shape == (12, 24, 24)
    assert set(np.unique(data.alphas)) == {0.0, 1.0}
    transparent = data.alphas == 0
    np.testing.assert_allclose(data.images[transparent], np.tile([0.2, 0.4, 0.6], (int(transparent.sum()), 1)), atol=1e-6)
    assert data.subset([3, 5]).alphas.shape == (2, 24, 24)
    half = load_posed_images(objects / "vase", "train", resolution=12)
    assert half.alphas.shape == (12, 12, 12) and 0 < half.alphas.mean() < 1
    assert load_posed_images(objects / "rock", "train").alphas is None  # no alpha channel: None


def test_fit_uses_alpha_against_free_space_opacity(objects: Path, tmp_path: Path) -> None:
    from sjc_core.fit.fitting import fit_posed_images
    from sjc_core.fit.settings import FitSettings
    from sjc_core.plugins import load_registry

    free = {}
    for weight in (0.0, 1.0):
        settings = FitSettings(
            steps=150, lr=0.1, batch_rays=1024, video_frames=0, eval_every=0, alpha_weight=weight,
            field_options={"grid_size": 32},
        )
        result = fit_posed_images(objects / "vase", tmp_path / f"w{weight}", settings, load_registry(), log=lambda line: None)
        free[weight] = result.metrics["heldout_free_space_opacity"]
    assert free[1.0] < 0.5 * free[0.0], free  # the alpha term clears what the field paints in empty space
