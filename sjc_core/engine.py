"""The chaining loop: render a view, score it with PAAS, back-propagate through the renderer.

One step is: draw a training camera, render the field, ask the prior for the PAAS
gradient ``g`` at a scheduled sigma, and minimise ``-(g * y).sum() + regularisers`` with one
backward pass and one Adamax step. The loop owns the run folder: resolved recipe,
``metrics.jsonl``, periodic views, atomic checkpoints, resume, Ctrl-C and the turntable.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F

from sjc_core import artifacts, toml_out
from sjc_core.cameras import TrainView, intrinsics, sample_train_view, test_path
from sjc_core.checkpoint import load_checkpoint, save_checkpoint
from sjc_core.devices import resolve_device
from sjc_core.contracts import BuildContext, Loss, Prior, RenderOutput, View
from sjc_core.errors import SjcError
from sjc_core.optim import Adamax
from sjc_core.paas import default_sigma_range, paas_gradient, sigma_schedule
from sjc_core.progress import Progress
from sjc_core.recipe import Recipe
from sjc_core.render import render_view

PAAS_TERM = "paas"


@dataclass
class Components:
    """The built plugins of one recipe."""

    prior: Prior
    field: torch.nn.Module
    losses: list[tuple[str, Loss]]
    device: torch.device


def build_components(recipe: Recipe, device: torch.device) -> Components:
    """Build prior, then the field sized by the prior's channels, then the losses."""
    ctx = BuildContext(device=device, base_dir=recipe.base_dir, seed=recipe.settings.seed)
    prior = recipe.prior.info.factory(recipe.prior.options, ctx)
    field_ctx = replace(ctx, channels=prior.channels, value_range=prior.value_range)
    field_module = recipe.field.info.factory(recipe.field.options, field_ctx).to(device)
    losses = [(choice.info.name, choice.info.factory(choice.options, ctx)) for choice in recipe.losses]
    return Components(prior=prior, field=field_module, losses=losses, device=device)


@dataclass(frozen=True)
class CameraPlan:
    """Radius, field-of-view range and render size actually used for training."""

    radius: float
    fov_range: tuple[float, float]
    render_size: int


def camera_plan(recipe: Recipe, prior: Prior) -> CameraPlan:
    camera = recipe.settings.camera
    hint = getattr(prior, "camera_hint", None) if camera.follow_prior else None
    radius = hint.radius if hint else camera.radius
    fov_range = (hint.fov_deg, hint.fov_deg) if hint else camera.fov_range
    size = camera.resolution or getattr(prior, "render_resolution", None) or prior.resolution
    return CameraPlan(radius=radius, fov_range=fov_range, render_size=int(size))


@dataclass(frozen=True)
class RunFolder:
    """Where a run writes; the layout is documented in the README."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.toml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def views(self) -> Path:
        return self.root / "views"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.safetensors"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def source(self) -> Path:
        """Where the recipe came from: relative paths in ``recipe.toml`` resolve there."""
        return self.root / "source.json"

    def base_dir(self) -> Path | None:
        import json

        try:
            return Path(json.loads(self.source.read_text())["base_dir"])
        except (OSError, ValueError, KeyError):
            return None


@dataclass
class LoadedRun:
    """A run folder brought back to life: its recipe, built plugins and last checkpoint."""

    folder: RunFolder
    recipe: Recipe
    parts: Components
    step: int
    plan: CameraPlan


def load_run(run_dir: Path, registry: Any) -> LoadedRun:
    """Rebuild a run's prior and field from its folder and load its last checkpoint."""
    from sjc_core.recipe import load_recipe

    folder = RunFolder(Path(run_dir))
    if not folder.recipe.exists():
        raise SjcError(f"{run_dir}: not a run folder (no recipe.toml)")
    if not folder.checkpoint.exists():
        raise SjcError(f"{run_dir}: no checkpoint yet ({folder.checkpoint} is missing)")
    recipe = load_recipe(folder.recipe, registry, base_dir=folder.base_dir())
    parts = build_components(recipe, resolve_device(recipe.settings.device))
    snapshot = load_checkpoint(folder.checkpoint)
    parts.field.load_state_dict(snapshot.field_state)
    return LoadedRun(folder, recipe, parts, snapshot.step, camera_plan(recipe, parts.prior))


def default_run_dir(recipe: Recipe) -> Path:
    settings = recipe.settings
    return Path(settings.output) / f"{settings.name}-seed{settings.seed}"


def read_status(folder: RunFolder) -> dict[str, Any]:
    if not folder.status.exists():
        return {}
    try:
        return json.loads(folder.status.read_text())
    except (OSError, ValueError):
        return {}


def write_status(folder: RunFolder, **status: Any) -> None:
    artifacts.write_text(folder.status, json.dumps(status, indent=2) + "\n")


class _StopFlag:
    """Set by SIGINT so the loop stops between steps, never inside an optimizer update."""

    def __init__(self) -> None:
        self.raised = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.raised:  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        self.raised = True


@dataclass
class StepResult:
    sigma: float
    label: str
    terms: dict[str, float]
    seconds: dict[str, float]
    render: RenderOutput
    scored: torch.Tensor


@dataclass
class Trainer:
    """Everything one run needs between steps (built once, stepped many times)."""

    recipe: Recipe
    parts: Components
    plan: CameraPlan
    optimizer: torch.optim.Optimizer
    sigmas: np.ndarray
    camera_rng: np.random.Generator
    noise_rng: torch.Generator
    step: int = 0
    timings: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def create(cls, recipe: Recipe, parts: Components) -> "Trainer":
        settings = recipe.settings
        torch.manual_seed(settings.seed)  # plugins that draw from the global generator
        plan = camera_plan(recipe, parts.prior)
        optimizer = Adamax(parts.field.param_groups(settings.lr), lr=settings.lr)
        low, high = default_sigma_range(parts.prior)
        paas = settings.paas
        sigmas = sigma_schedule(
            paas.schedule,
            parts.prior.sigmas,
            settings.steps,
            np.random.default_rng([settings.seed, 1]),
            sigma_min=paas.sigma_min if paas.sigma_min is not None else low,
            sigma_max=paas.sigma_max if paas.sigma_max is not None else high,
        )
        noise_rng = torch.Generator(device=parts.device)
        noise_rng.manual_seed(settings.seed)
        return cls(
            recipe=recipe,
            parts=parts,
            plan=plan,
            optimizer=optimizer,
            sigmas=sigmas,
            camera_rng=np.random.default_rng([settings.seed, 2]),
            noise_rng=noise_rng,
        )

    def draw_view(self) -> TrainView:
        return sample_train_view(self.camera_rng, self.recipe.settings.camera, self.plan.radius, self.plan.fov_range)

    def train_step(self) -> StepResult:
        """One SJC step; raises FloatingPointError (without updating) on NaN or Inf."""
        parts, settings = self.parts, self.recipe.settings
        prior = parts.prior
        view = self.draw_view()
        sigma = float(self.sigmas[self.step])
        progress = self.step / settings.steps
        size = self.plan.render_size
        clock = time.perf_counter()

        render = render_view(parts.field, intrinsics(view.fov_deg, size, size), view.c2w, size, size)
        scored = render.image[None]
        if size != prior.resolution:
            scored = F.interpolate(scored, size=(prior.resolution, prior.resolution), mode="bilinear", align_corners=False)
        after_render = time.perf_counter()

        cond = prior.condition(View(label=view.label, c2w=torch.as_tensor(view.c2w), fov_deg=view.fov_deg))
        grad = paas_gradient(
            prior, scored, sigma, cond, n_noise=settings.paas.n_noise, var_red=settings.paas.var_red, generator=self.noise_rng
        )
        after_prior = time.perf_counter()

        terms = {name: loss(render, progress) for name, loss in parts.losses}
        surrogate = -(grad.to(scored.dtype) * scored).sum()
        total = surrogate + sum(terms.values(), torch.zeros((), device=surrogate.device))
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        after_backward = time.perf_counter()

        values = {name: float(value.detach()) for name, value in terms.items()}
        values[PAAS_TERM] = float(grad.norm())
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if not bad and not _gradients_finite(self.optimizer):
            bad = ["gradient"]
        if bad:
            raise FloatingPointError(f"{', '.join(bad)} became NaN or Inf at step {self.step + 1}")
        self.optimizer.step()
        done = time.perf_counter()
        self.step += 1
        seconds = {
            "render": after_render - clock,
            "prior": after_prior - after_render,
            "backward": after_backward - after_prior,
            "optimizer": done - after_backward,
        }
        return StepResult(sigma, view.label, values, seconds, render, scored.detach())


def _gradients_finite(optimizer: torch.optim.Optimizer) -> bool:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.stack([g.sum() for g in grads])).all())


def view_picture(prior: Prior, scored: torch.Tensor, depth: torch.Tensor, height: int = 256) -> np.ndarray:
    """The prior's picture beside the depth map, enlarged for viewing."""
    with torch.no_grad():
        rgb = artifacts.to_uint8(prior.to_rgb(scored)[0])
    depth_rgb = artifacts.depth_to_rgb(depth)
    pane = artifacts.side_by_side(rgb, depth_rgb)
    factor = max(1, height // pane.shape[0])
    return artifacts.upscale(pane, factor)


def render_turntable(
    parts: Components,
    recipe: Recipe,
    plan: CameraPlan,
    out_path: Path,
    frames: int | None = None,
    subpixel: int = 1,
    on_frame: Callable[[int, int], None] | None = None,
) -> tuple[Path, list[np.ndarray]]:
    """Render the recipe's test path and write the video (picture beside depth)."""
    camera = recipe.settings.camera
    if frames is not None:
        camera = camera.model_copy(update={"test_frames": frames})
    size = plan.render_size
    K = intrinsics(camera.test_fov, size, size)
    pictures = []
    parts.field.eval()
    poses = test_path(camera, plan.radius)
    with torch.no_grad():
        for index, pose in enumerate(poses):
            render = render_view(parts.field, K, pose, size, size, subpixel=subpixel, keep_weights=False)
            scored = render.image[None]
            if size != parts.prior.resolution:
                scored = F.interpolate(scored, size=(parts.prior.resolution,) * 2, mode="bilinear", align_corners=False)
            pictures.append(view_picture(parts.prior, scored, render.depth))
            if on_frame:
                on_frame(index + 1, len(poses))
    parts.field.train()
    written = artifacts.write_video(out_path, pictures, fps=camera.fps)
    return written, pictures


@dataclass
class RunSummary:
    run_dir: Path
    state: str
    step: int
    wall_seconds: float
    final_terms: dict[str, float]
    outputs: dict[str, str] = field(default_factory=dict)


def run(
    recipe: Recipe,
    run_dir: Path | None = None,
    resume: bool = False,
    stream: TextIO | None = None,
    parts: Components | None = None,
) -> RunSummary:
    """Train a recipe into its run folder (or continue it with ``resume``)."""
    stream = stream or sys.stderr
    settings = recipe.settings
    folder = RunFolder(Path(run_dir) if run_dir else default_run_dir(recipe))
    _check_folder(folder, resume)
    device = resolve_device(settings.device)
    # Build plugins before touching the folder: a missing model leaves nothing behind.
    parts = parts or build_components(recipe, device)
    trainer = Trainer.create(recipe, parts)

    folder.root.mkdir(parents=True, exist_ok=True)
    if resume and folder.checkpoint.exists():
        _restore(trainer, folder)
        print(f"resuming {folder.root} at step {trainer.step}/{settings.steps}", file=stream)
    else:
        artifacts.write_text(folder.recipe, toml_out.dumps(recipe.resolved()))
        artifacts.write_text(folder.source, json.dumps({"base_dir": str(recipe.base_dir)}) + "\n")
        if folder.metrics.exists():
            folder.metrics.unlink()
    if trainer.step >= settings.steps and read_status(folder).get("state") == "finished":
        print(f"{folder.root} is already finished ({settings.steps} steps)", file=stream)
        return RunSummary(folder.root, "finished", trainer.step, 0.0, {})

    started = time.perf_counter()
    stop = _StopFlag()
    previous_handler = signal.signal(signal.SIGINT, stop) if _main_thread() else None
    bar = Progress(settings.steps, start=trainer.step, stream=stream)
    terms: dict[str, float] = {}
    state = "finished"
    try:
        write_status(folder, state="running", step=trainer.step, steps=settings.steps)
        while trainer.step < settings.steps:
            try:
                result = trainer.train_step()
            except FloatingPointError as exc:
                state = "failed"
                kept = load_checkpoint(folder.checkpoint).step if folder.checkpoint.exists() else None
                keep_note = f"the last good checkpoint (step {kept}) is kept" if kept is not None else "no checkpoint was written yet"
                write_status(folder, state="failed", step=trainer.step, steps=settings.steps, error=str(exc))
                raise SjcError(f"run stopped: {exc}; {keep_note} in {folder.checkpoint.parent}") from None
            terms = result.terms
            _log_step(folder, trainer.step, result)
            bar.update(trainer.step, _status_text(result, parts.prior))
            if trainer.step % settings.view_every == 0 or trainer.step == settings.steps:
                picture = view_picture(parts.prior, result.scored, result.render.depth)
                artifacts.write_image(folder.views / f"step_{trainer.step:06d}.png", picture)
            if trainer.step % settings.checkpoint_every == 0 or trainer.step == settings.steps:
                _save(trainer, folder)
            if stop.raised:
                state = "interrupted"
                break
    finally:
        bar.close()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)

    wall = time.perf_counter() - started
    if state == "interrupted":
        _save(trainer, folder)
        write_status(folder, state="interrupted", step=trainer.step, steps=settings.steps)
        print(
            f"interrupted at step {trainer.step}; checkpoint written. Continue with: sjc run RECIPE --resume",
            file=stream,
        )
        return RunSummary(folder.root, state, trainer.step, wall, terms)

    outputs = _finish(trainer, folder, stream)
    write_status(
        folder, state="finished", step=trainer.step, steps=settings.steps, final_terms=terms, wall_seconds=wall, outputs=outputs
    )
    return RunSummary(folder.root, "finished", trainer.step, wall, terms, outputs)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _check_folder(folder: RunFolder, resume: bool) -> None:
    if resume:
        if not folder.checkpoint.exists() and not folder.root.exists():
            raise SjcError(f"{folder.root}: nothing to resume (no run folder); run without --resume to start it")
        return
    if folder.checkpoint.exists() or folder.status.exists():
        status = read_status(folder)
        where = f" ({status.get('state', 'unknown')} at step {status.get('step', '?')})" if status else ""
        raise SjcError(
            f"{folder.root}: already holds a run{where}; pass --resume to continue it, "
            "or choose another folder with --run-dir or --set name=..."
        )


def _restore(trainer: Trainer, folder: RunFolder) -> None:
    snapshot = load_checkpoint(folder.checkpoint)
    trainer.parts.field.load_state_dict(snapshot.field_state)
    if snapshot.optimizer_state is not None:
        trainer.optimizer.load_state_dict(snapshot.optimizer_state)
    if snapshot.numpy_state is not None:
        trainer.camera_rng.bit_generator.state = snapshot.numpy_state
    if snapshot.torch_state is not None:
        trainer.noise_rng.set_state(snapshot.torch_state)
    trainer.step = snapshot.step
    _truncate_metrics(folder.metrics, snapshot.step)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records after the checkpoint (a crash can log steps it never saved)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    artifacts.write_text(path, "".join(line + "\n" for line in kept))


def _save(trainer: Trainer, folder: RunFolder) -> None:
    save_checkpoint(
        folder.checkpoint,
        trainer.step,
        trainer.parts.field,
        trainer.optimizer,
        trainer.camera_rng,
        trainer.noise_rng,
        extra={"steps": trainer.recipe.settings.steps},
    )


def _log_step(folder: RunFolder, step: int, result: StepResult) -> None:
    artifacts.append_jsonl(
        folder.metrics,
        {
            "step": step,
            "sigma": result.sigma,
            "view": result.label,
            "terms": result.terms,
            "seconds": {k: round(v, 5) for k, v in result.seconds.items()},
        },
    )


def _status_text(result: StepResult, prior: Prior) -> str:
    terms = " ".join(f"{name} {value:.3g}" for name, value in result.terms.items())
    prompt = getattr(prior, "describe_view", None)
    view = prompt(result.label) if callable(prompt) else f"{result.label} view"
    return f"{terms} | sigma {result.sigma:.3g} | {view}"


def _finish(trainer: Trainer, folder: RunFolder, stream: TextIO) -> dict[str, str]:
    """The turntable video and a strip of its frames."""
    print("rendering the turntable...", file=stream)
    video, pictures = render_turntable(trainer.parts, trainer.recipe, trainer.plan, folder.final / "turntable.mp4")
    strip_path = artifacts.write_image(folder.final / "turntable_strip.png", artifacts.strip(pictures, 8))
    last = artifacts.write_image(folder.final / "last_view.png", pictures[len(pictures) // 2])
    print(f"wrote {video}", file=stream)
    return {"turntable": video.name, "strip": strip_path.name, "view": last.name}
