"""What ``sjc fit`` can change (:class:`FitSettings`) and what it returns (:class:`FitResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class FitSettings:
    """Everything ``sjc fit`` can change; defaults suit the 64x64 demo set."""

    steps: int = 1000
    lr: float = 0.1
    optimizer: Literal["adam", "adamax"] = "adam"
    lr_final_ratio: float = 0.1  # learning rate decays exponentially to lr * this ratio
    sparsity: float = 3e-4  # weight of mean over rays of sum_j log(1 + 10 w_j): clears fog
    distortion: float = 0.01  # weight of mip-NeRF 360's distortion loss per ray (0: off): one surface, not a haze
    alpha_weight: float = 1.0  # pictures with alpha: weight of mean (opacity - alpha)^2 (0: alpha unused)
    batch_rays: int = 4096
    resolution: int | None = None
    holdout: int | None = None  # None: transforms_test.json when present, else 1 in 10
    z_up: bool = False
    scale: float | Literal["auto"] = 1.0
    center: bool = False
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    near: float | None = None  # None: half the nearest training camera's distance to the origin
    seed: int = 0
    subpixel: int = 1
    video_frames: int = 60
    fps: int = 20
    log_every: int = 50
    eval_every: int = 250  # held-out PSNR during training every N steps (0: only at the end)
    device: str = "cpu"
    field_name: str = "voxel"
    field_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitResult:
    """Where things went and the figures that matter."""

    out_dir: Path
    metrics: dict[str, Any]
    video: Path | None
