"""The small typed contracts between the engine and its plugins.

Plugins depend on these names only; the engine never imports a plugin module.
Everything is in the variance-exploding (Karras/EDM) convention: ``x_sigma = x + sigma*n``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: listing and validating recipes never import torch
    import torch


def _cpu() -> Any:
    import torch

    return torch.device("cpu")


@dataclass(frozen=True)
class BuildContext:
    """What a plugin factory may need besides its own options.

    ``base_dir`` resolves relative paths in options (the recipe's folder).
    ``channels`` and ``value_range`` describe the prior's images; fields read them to size
    their feature grid and pick their default feature activation. ``backdrop`` is the plain
    background colour of the prior's images in its value space (the prior's optional
    ``plain_background``), or None: fields may start their background and colours at it.
    """

    device: torch.device = field(default_factory=_cpu)
    base_dir: Path = Path(".")
    channels: int | None = None
    value_range: tuple[float, float] | None = None
    seed: int = 0
    backdrop: tuple[float, ...] | None = None


@dataclass(frozen=True)
class View:
    """A training or test camera as a prior sees it (for view-dependent conditioning).

    ``label`` is one of ``front``, ``side``, ``back``, ``overhead`` (or None for test
    views and 2D sampling); ``c2w`` is the 4x4 camera-to-world pose (OpenGL, y-up);
    ``azimuth_deg`` the camera's azimuth around the object (0 = front, 90 = side, 180 =
    back; host data, for priors that weigh view prompts by angle, such as Perp-Neg).
    """

    label: str | None = None
    c2w: torch.Tensor | None = None
    fov_deg: float | None = None
    azimuth_deg: float | None = None


@dataclass
class RenderOutput:
    """What a volume render returns.

    ``image`` is [C, H, W]; ``depth`` and ``opacity`` are [H, W]. ``weights`` holds every
    per-sample weight that can be non-zero (any shape); ``sample_count`` is the number of
    samples the bundle had in total, so regularisers that average over all samples (the
    reference's emptiness mean includes out-of-box zeros) use the right denominator.
    """

    image: torch.Tensor
    depth: torch.Tensor
    opacity: torch.Tensor
    weights: torch.Tensor
    sample_count: int
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CameraHint:
    """Cameras a prior's own images were taken with (posed image sets).

    Training with the data's radius and field of view avoids pulling renders toward the
    wrong scale; the engine uses this when ``camera.follow_prior`` is true. ``poses``
    ([N, 4, 4] camera-to-world, host numbers) are the cameras themselves: with
    ``camera.poses = "prior"`` training draws among them.
    """

    radius: float
    fov_deg: float
    poses: Any = field(default=None, compare=False, repr=False)


@runtime_checkable
class Prior(Protocol):
    """A denoiser D(x; sigma) ~ E[x | x_sigma] over images of a fixed size.

    Optional attributes the engine reads with ``getattr``:

    - ``default_sigma_range: tuple[float, float]`` -- the PAAS schedule's range when the
      recipe gives none (default: the ladder without its 10 smallest and 30 largest values).
    - ``render_resolution: int`` -- size to render at; the engine resizes bilinearly to
      ``resolution`` before scoring, as the reference does for 256px pixel models.
    - ``camera_hint: CameraHint | None`` -- radius and field of view of its own cameras.
    - ``plain_background: tuple[float, ...] | None`` -- the one colour (value space, one
      number per channel) that its images' borders share, when they share one.
    - ``views_per_step: int`` -- how many views it scores at once (default 1). With N > 1
      (the ``mvdream`` prior) the trainer draws the first camera as for N = 1 and turns it
      about the up axis by 360/N degrees N - 1 times (same elevation, distance, field of
      view), renders each, stacks them [N, C, H, W] and conditions with the optional
      ``condition_views(views: list[View])`` instead of ``condition``; the estimator gets the
      batch (one sigma, noise per image) and returns one gradient per view, the surrogate
      sums over the views, each loss is the mean over the N renders, and the step's logs
      keep the first view.
    """

    channels: int
    resolution: int
    sigmas: torch.Tensor  # ascending discrete noise levels the model knows
    value_range: tuple[float, float] | None  # (-1, 1) for pixels, None for latents

    def condition(self, view: View | None) -> Any:
        """Conditioning for a view (cached by the prior); None means unconditioned."""
        ...

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        """D(x; sigma) for x [B, C, H, W]; sigma a scalar tensor or [B]."""
        ...

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Pictures in [0, 1], [B, 3, H', W'] (decodes latents)."""
        ...


@runtime_checkable
class Field(Protocol):
    """A radiance field over the axis-aligned box ``aabb`` ([2, 3]: min row, max row).

    ``step_size`` is the ray-marching step; features are evaluated only for samples whose
    weight exceeds ``weight_threshold`` (their colour is exactly 0 elsewhere).

    Optional fast path: ``render_foreground(bundle: sjc_core.render.samples.SampleBundle)`` returning
    ``(features [n, C], weights [n, k])`` -- the volume integral without the background, in
    one fused step -- optionally followed by ``opacity [n]`` (sum of weights) and ``depth [n]``
    (sum of weight * distance) when it computes them on the way, or None to decline. :func:`sjc_core.render.view.render_rays` uses it when
    present; it must equal the generic path built from ``density`` and ``features``.

    Optional whole-camera path: ``render_camera(K, c2w, height, width, *, subpixel=1,
    keep_weights=True) -> RenderOutput`` (image [C, H, W], depth and opacity [H, W], the
    background composited, ``weights``/``sample_count`` meaningful to the losses). When a
    field has it (the ``gaussians`` splat field), :func:`sjc_core.render.view.render_view`
    calls it instead of the ray-marching stages, and ``render_rays`` refuses the field with
    one line. ``density``/``features`` at points are still needed (``sjc export-mesh``).

    Optional training hook: ``after_step(step, optimizer) -> bool``, called by the trainer
    after each optimizer update (``step`` counts from 1); it returns True when it changed
    the parameter set, having carried the optimizer's state along (see
    :func:`sjc_core.training.optim.reindex_state`). Optional ``resize_for_state(state)`` is
    called before a checkpoint's state is loaded, so parameters whose size changes during
    training take the checkpoint's sizes (and a field may add to ``state`` what checkpoints
    written before it existed lack, such as the hash grid's occupancy record); optional ``export_files(folder) -> dict[str, str]``
    writes extra files into a finished run's ``final/`` (the splats' ``.ply``).
    """

    aabb: torch.Tensor
    step_size: float
    weight_threshold: float

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """Volume density sigma >= 0 at points [N, 3] -> [N]."""
        ...

    def features(self, points: torch.Tensor) -> torch.Tensor:
        """Activated features (colour or latent) at points [N, 3] -> [N, C]."""
        ...

    def background(self, directions: torch.Tensor) -> torch.Tensor:
        """Background features for unit ray directions [N, 3] -> [N, C]."""
        ...

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups with their own learning rates."""
        ...


@runtime_checkable
class Loss(Protocol):
    """A regulariser; its weight schedule lives inside it.

    Optional hook: ``attach(field=..., prior=..., device=...)``. When a loss has it, the
    trainer calls it once after building the field (before any step), so a loss can render
    views of its own (the ``reference-view`` loss renders the input picture's camera with
    :func:`sjc_core.render.view.render_view`) or ask the prior to encode a target.
    """

    def __call__(self, render: RenderOutput, progress: float) -> torch.Tensor:
        """Weighted scalar loss for one render; ``progress`` runs over [0, 1)."""
        ...
