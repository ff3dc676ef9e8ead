"""One training step, and what it is built from: the run-independent core of the chaining loop.

Apart from :mod:`sjc_core.runs.engine` so the step itself (plugins built from a recipe, the
camera plan, render -> estimator gradient -> backward -> Adamax) can be read, tested and
changed without the run-folder bookkeeping or the turntable around it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from sjc_core.contracts import BuildContext, Loss, Prior, RenderOutput, View
from sjc_core.errors import SjcError
from sjc_core.recipes.estimator_table import estimator_of
from sjc_core.recipes.recipe import Recipe
from sjc_core.render.cameras import (
    TrainView,
    intrinsics,
    pick_posed_view,
    sample_train_view,
    turned_views,
)
from sjc_core.render.spans import host_aabb
from sjc_core.render.view import render_view
from sjc_core.training.estimation import Estimator
from sjc_core.training.lr_schedule import apply_decay, decay_factor
from sjc_core.training.optim import Adamax

PAAS_TERM = "paas"


@dataclass
class Components:
    """The built plugins of one recipe."""

    prior: Prior
    field: torch.nn.Module
    losses: list[tuple[str, Loss]]
    device: torch.device


def build_components(recipe: Recipe, device: torch.device, note: Callable[[str], None] | None = None) -> Components:
    """Build prior, then the field sized by the prior's channels, then the losses; ``note``
    hears what is being built before each (loading weights or compiling a kernel takes time)."""
    say = note or (lambda line: None)
    ctx = BuildContext(device=device, base_dir=recipe.base_dir, seed=recipe.settings.seed)
    say(f"loading the prior ({recipe.prior.info.name})...")
    prior = recipe.prior.info.factory(recipe.prior.options, ctx)
    field_ctx = replace(
        ctx, channels=prior.channels, value_range=prior.value_range,
        backdrop=getattr(prior, "plain_background", None),
    )
    say(f"building the field ({recipe.field.info.name})...")
    field_module = recipe.field.info.factory(recipe.field.options, field_ctx).to(device)
    losses = [(choice.info.name, choice.info.factory(choice.options, ctx)) for choice in recipe.losses]
    for _, loss in losses:  # optional hook: losses that render views of their own (reference-view)
        attach = getattr(loss, "attach", None)
        if callable(attach):
            attach(field=field_module, prior=prior, device=device)
    return Components(prior=prior, field=field_module, losses=losses, device=device)


@dataclass(frozen=True)
class CameraPlan:
    """Radius, field-of-view range and render size actually used for training."""

    radius: float
    fov_range: tuple[float, float]
    render_size: int
    poses: np.ndarray | None = None  # camera.poses = "prior": training cameras are drawn among these


def camera_plan(recipe: Recipe, prior: Prior) -> CameraPlan:
    camera = recipe.settings.camera
    size = int(camera.resolution or getattr(prior, "render_resolution", None) or prior.resolution)
    if camera.poses == "prior":
        posed = getattr(prior, "camera_hint", None)
        if posed is None or posed.poses is None:
            raise SjcError(
                "camera.poses: 'prior' needs a prior with posed images (for the empirical prior, a folder with "
                "transforms_train.json); use 'sphere'"
            )
        poses = np.asarray(posed.poses, dtype=np.float64).reshape(-1, 4, 4)
        return CameraPlan(posed.radius, (posed.fov_deg, posed.fov_deg), size, poses)
    hint = getattr(prior, "camera_hint", None) if camera.follow_prior else None
    radius = hint.radius if hint else camera.radius
    fov_range = (hint.fov_deg, hint.fov_deg) if hint else camera.fov_range
    return CameraPlan(radius=radius, fov_range=fov_range, render_size=size)


@dataclass
class StepResult:
    """One step's outcome. ``values`` stays on the device (loss terms in ``names`` order,
    then the PAAS gradient's norm and the sum of all parameter gradients, the NaN probe);
    :meth:`Trainer.fetch` reads a batch of them back with one copy and fills ``terms``.
    It holds no render graph: a run keeps up to ``log_every`` of them."""

    step: int
    sigma: float
    label: str
    names: tuple[str, ...]
    values: torch.Tensor
    seconds: dict[str, float]
    depth: torch.Tensor  # the (first) render's depth map [H, W], detached (pictures)
    opacity: torch.Tensor  # the render's opacity [H, W], detached (pictures)
    scored: torch.Tensor  # the picture the prior scored [1, C, h, w] (a multi-view step: the first view's), detached
    terms: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0  # the base learning rate this step took (after the recipe's decay)


class NonFiniteStep(FloatingPointError):
    """A step whose loss terms or gradients were NaN or Inf (``result`` is that step)."""

    def __init__(self, result: StepResult, message: str) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class Trainer:
    """Everything one run needs between steps (built once, stepped many times).

    A step makes no host round trip: loss terms stay on the device until :meth:`fetch`.
    ``synchronize`` (e.g. ``torch.cuda.synchronize``), when set, is called before each
    phase's timestamp so that ``StepResult.seconds`` means device time (benchmarks only:
    it serialises the step).
    """

    recipe: Recipe
    parts: Components
    plan: CameraPlan
    optimizer: torch.optim.Optimizer
    sigmas: np.ndarray
    camera_rng: np.random.Generator
    noise_rng: torch.Generator
    estimator: Estimator
    base_lrs: tuple[float, ...]  # each parameter group's rate before the recipe's decay
    term: str = PAAS_TERM  # the estimator's name: its gradient norm's key among the step's terms
    step: int = 0
    synchronize: Callable[[], None] | None = None

    @classmethod
    def create(cls, recipe: Recipe, parts: Components) -> "Trainer":
        settings = recipe.settings
        torch.manual_seed(settings.seed)  # plugins that draw from the global generator
        plan = camera_plan(recipe, parts.prior)
        optimizer = Adamax(parts.field.param_groups(settings.lr), lr=settings.lr)
        # The estimator's whole schedule, drawn now from its own stream: a resumed run
        # (same seed, same recipe) draws the same levels again and continues at its step.
        choice = estimator_of(recipe)
        ctx = BuildContext(device=parts.device, base_dir=recipe.base_dir, seed=settings.seed)
        estimator = choice.info.factory(choice.options, ctx)
        sigmas = estimator.schedule(parts.prior, settings.steps, np.random.default_rng([settings.seed, 1]))
        noise_rng = torch.Generator(device=parts.device)
        noise_rng.manual_seed(settings.seed)
        host_aabb(parts.field)  # the box on the host once, before any step needs it
        return cls(
            recipe=recipe,
            parts=parts,
            plan=plan,
            optimizer=optimizer,
            sigmas=sigmas,
            camera_rng=np.random.default_rng([settings.seed, 2]),
            noise_rng=noise_rng,
            estimator=estimator,
            term=choice.info.name,
            base_lrs=tuple(group["lr"] for group in optimizer.param_groups),
        )

    def draw_view(self) -> TrainView:
        camera = self.recipe.settings.camera
        if self.plan.poses is not None:
            return pick_posed_view(self.camera_rng, self.plan.poses, self.plan.fov_range[0], camera.overhead_below)
        return sample_train_view(self.camera_rng, camera, self.plan.radius, self.plan.fov_range)

    def _clock(self) -> float:
        if self.synchronize is not None:
            self.synchronize()
        return time.perf_counter()

    def train_step(self) -> StepResult:
        """One SJC step: render, the estimator's gradient, one backward, one Adamax update.

        Nothing here waits for the device; NaN or Inf is found by :meth:`fetch`.
        """
        parts, settings = self.parts, self.recipe.settings
        prior = parts.prior
        view = self.draw_view()
        sigma = float(self.sigmas[self.step])
        progress = self.step / settings.steps
        size = self.plan.render_size
        clock = self._clock()

        # A multi-view prior (views_per_step N > 1) scores N cameras turned 360/N degrees apart
        # about the first, which is drawn as for N = 1 (no further randomness).
        count = int(getattr(prior, "views_per_step", 1) or 1)
        views = [view] if count == 1 else turned_views(view, count, settings.camera.overhead_below)
        renders = [render_view(parts.field, intrinsics(v.fov_deg, size, size), v.c2w, size, size) for v in views]
        render = renders[0]
        # [N, C, H, W]; one view keeps the render's own strides (the UNet's kernels, hence its bits, follow them)
        scored = render.image[None] if count == 1 else torch.stack([r.image for r in renders])
        if size != prior.resolution:
            scored = F.interpolate(scored, size=(prior.resolution, prior.resolution), mode="bilinear", align_corners=False)
        after_render = self._clock()

        seen = [
            View(label=v.label, c2w=torch.as_tensor(v.c2w), fov_deg=v.fov_deg, azimuth_deg=v.azimuth_deg) for v in views
        ]
        cond = prior.condition(seen[0]) if count == 1 else prior.condition_views(seen)
        grad = self.estimator.gradient(prior, scored, sigma, progress, cond, self.noise_rng)
        after_prior = self._clock()

        terms = {name: _mean_loss(loss, renders, progress) for name, loss in parts.losses}
        surrogate = -(grad.to(scored.dtype) * scored).sum()
        total = surrogate + sum(terms.values(), torch.zeros((), device=surrogate.device))
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        after_backward = self._clock()

        probes = [value.detach().reshape(()).float() for value in terms.values()]
        probes += [grad.norm().float(), _gradient_sum(self.optimizer, surrogate.device)]
        values = torch.stack(probes)
        decay = decay_factor(settings.lr_final_ratio, self.step, settings.steps)
        apply_decay(self.optimizer, self.base_lrs, decay)
        self.optimizer.step()
        after_step = getattr(parts.field, "after_step", None)  # densify/prune (splats): see Field
        if after_step is not None:
            after_step(self.step + 1, self.optimizer)
        done = self._clock()
        self.step += 1
        seconds = {
            "render": after_render - clock,
            "prior": after_prior - after_render,
            "backward": after_backward - after_prior,
            "optimizer": done - after_backward,
        }
        names = (*terms, self.term)
        return StepResult(
            self.step, sigma, view.label, names, values, seconds,
            render.depth.detach(), render.opacity.detach(), scored[:1].detach(), lr=settings.lr * decay,
        )

    @staticmethod
    def fetch(results: list[StepResult]) -> None:
        """Read the steps' device values back with one copy; fill each ``terms``.

        Raises FloatingPointError naming the first step whose loss terms or gradients
        became NaN or Inf (its update and later ones must not be kept).
        """
        if not results:
            return
        table = torch.stack([r.values for r in results]).to("cpu", torch.float64).numpy()
        for result, row in zip(results, table):
            result.terms = {name: float(value) for name, value in zip(result.names, row)}
            bad = [name for name, value in result.terms.items() if not math.isfinite(value)]
            if not bad and not math.isfinite(row[-1]):
                bad = ["gradient"]
            if bad:
                raise NonFiniteStep(result, f"{', '.join(bad)} became NaN or Inf at step {result.step}")


def _mean_loss(loss: Loss, renders: list[RenderOutput], progress: float) -> torch.Tensor:
    """A loss over the step's renders: its value for the one render, or the mean over the views
    (a multi-view step), so a loss weight means the same whatever the number of views."""
    if len(renders) == 1:
        return loss(renders[0], progress)
    return torch.stack([loss(r, progress).reshape(()) for r in renders]).mean()


def _gradient_sum(optimizer: torch.optim.Optimizer, device: torch.device) -> torch.Tensor:
    """The sum of every parameter gradient: finite iff all of them are (one reduction each)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.stack([g.sum().float() for g in grads]).sum()


def parameters_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter is finite (waits for the device: checkpoints only)."""
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())
