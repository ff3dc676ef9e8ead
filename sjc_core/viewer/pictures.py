"""The page's pictures: the field from the page's camera, beside its depth, with no gradient.

The same path as ``sjc render``'s frames (``render_view``, then the prior's ``to_rgb``), so a
picture on the page equals ``sjc render``'s picture of the same camera.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sjc_core.files import pictures as files_pictures
from sjc_core.render.view import render_view
from sjc_core.runs.turntable import depth_panel


@dataclass(frozen=True)
class PageRender:
    rgb: np.ndarray  # uint8 [H, W, 3]
    depth: np.ndarray  # uint8 [H, W, 3], near bright
    seconds: float

    def side_by_side(self) -> np.ndarray:
        return files_pictures.side_by_side(self.rgb, self.depth)


def render_page(field: Any, prior: Any, K: np.ndarray, c2w: np.ndarray, height: int, width: int) -> PageRender:
    """One picture of ``field`` from ``c2w`` (eval mode for the render, then back as it was)."""
    import time

    began = time.perf_counter()
    was_training = bool(getattr(field, "training", False))
    field.eval()
    try:
        with torch.no_grad():
            out = render_view(field, K, c2w, height, width, keep_weights=False)
            rgb = files_pictures.to_uint8(prior.to_rgb(out.image[None])[0])
            depth = depth_panel(out.depth, out.opacity)
    finally:
        if was_training:
            field.train()
    return PageRender(rgb, depth, time.perf_counter() - began)
