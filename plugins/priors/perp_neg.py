"""Perp-Neg view guidance (Armandpour et al. 2023), as stable-dreamfusion and LucidDreamer run it.

Against the multi-face (Janus) failure: for a camera at azimuth a (0 = front, +-90 = side,
180 = back), the positive prompt interpolates the view prompts of the two nearest
directions, and the view prompts of the other directions act as negatives. Each negative's
guidance direction enters only through its component perpendicular to the positive one,
so a negative cannot cancel what the positive asks for:

    eps = uncond + s * (d_0 + sum_k w_k * perp(d_k, d_0)),   d_k = eps_k - uncond,
    perp(x, y) = x - (<x, y> / max(|y|^2, 1e-6)) y   (per image, over all of its values).

Front half (|a| < 90), r = 1 - |a| / 90: positive r * front + (1 - r) * side; negatives
front with w = negative_weight * exp(-r * front_decay) (0 when r > 0.8) and side with
w = negative_weight * exp(-(1 - r) * side_decay) (0 when r < 0.2). Back half, r = 1 - (|a| -
90) / 90: positive r * side + (1 - r) * back; negatives side with w = negative_weight *
exp(-r * side_decay) / 2 (0 when r > 0.8) and front with w = negative_weight. Negatives
with |w| <= 1e-4 are left out (they contribute nothing in the published aggregator either),
so a step costs 2 to 4 UNet branches per image instead of 2. Elevation does not enter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MIN_WEIGHT = 1e-4  # the published aggregator skips negatives at or below this magnitude


@dataclass(frozen=True)
class PerpNegSettings:
    """The published defaults (stable-dreamfusion's ``get_pos_neg_text_embeddings``)."""

    negative_weight: float = -2.0
    front_decay: float = 2.0
    side_decay: float = 10.0


def signed_azimuth(azimuth_deg: float) -> float:
    """sjc's azimuth (0 = front, in [0, 360)) as Perp-Neg's, in [-180, 180)."""
    return (float(azimuth_deg) + 180.0) % 360.0 - 180.0


def view_mix(azimuth_deg: float, settings: PerpNegSettings) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """(positive prompt as {label: share}, negatives as [(label, weight)]) for a camera azimuth.

    Labels are the view prompts' (``front``, ``side``, ``back``); negatives whose weight is
    at most :data:`MIN_WEIGHT` in magnitude are dropped.
    """
    a = signed_azimuth(azimuth_deg)
    w = settings.negative_weight
    if -90.0 <= a < 90.0:
        r = 1.0 - abs(a) / 90.0
        positive = {"front": r, "side": 1.0 - r}
        front = 0.0 if r > 0.8 else math.exp(-r * settings.front_decay) * w
        side = 0.0 if r < 0.2 else math.exp(-(1.0 - r) * settings.side_decay) * w
        negatives = [("front", front), ("side", side)]
    else:
        r = 1.0 - (abs(a) - 90.0) / 90.0
        positive = {"side": r, "back": 1.0 - r}
        side = 0.0 if r > 0.8 else math.exp(-r * settings.side_decay) * w / 2.0
        negatives = [("side", side), ("front", w)]
    return positive, [(label, weight) for label, weight in negatives if abs(weight) > MIN_WEIGHT]


def perpendicular(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The part of each x[b] perpendicular to y[b] (inner products over all of an image's values)."""
    dims = tuple(range(1, x.dim()))
    along = (x * y).sum(dim=dims, keepdim=True) / (y * y).sum(dim=dims, keepdim=True).clamp(min=1e-6)
    return x - along * y


def aggregate(uncond: torch.Tensor, branches: list[torch.Tensor], weights: list[float], scale: float) -> torch.Tensor:
    """``uncond + scale * (d_0 + sum_k w_k perp(d_k, d_0))`` from the unconditional branch,
    the positive branch ``branches[0]`` and the negatives ``branches[1:]`` with ``weights``."""
    main = branches[0] - uncond
    combined = main
    for branch, weight in zip(branches[1:], weights):
        combined = combined + weight * perpendicular(branch - uncond, main)
    return uncond + scale * combined
