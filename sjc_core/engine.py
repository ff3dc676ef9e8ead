"""The chaining loop: render a view, score it with PAAS, back-propagate through the renderer.

One step is: draw a training camera, render the field, ask the prior for the PAAS
gradient ``g`` at a scheduled sigma, and minimise ``-(g * y).sum() + regularisers`` with one
backward pass and one Adamax step. The loop owns the run folder: resolved recipe,
``metrics.jsonl``, periodic views, atomic checkpoints, resume, Ctrl-C and the turntable.

The step lives in ``sjc_core.trainer``, the folder layout and checkpoints in
``sjc_core.run_folder`` and the pictures in ``sjc_core.turntable``; this module runs them
and re-exports their public names, so ``from sjc_core.engine import X`` keeps working.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sjc_core import artifacts, toml_out
from sjc_core.checkpoint import load_checkpoint
from sjc_core.contracts import Prior
from sjc_core.devices import resolve_device
from sjc_core.errors import SjcError
from sjc_core.progress import Progress
from sjc_core.recipe import Recipe
from sjc_core.run_folder import (
    RunFolder,
    _check_folder,
    _log_step,
    _restore,
    _save,
    default_run_dir,
    read_status,
    write_status,
)
from sjc_core.trainer import (
    PAAS_TERM,
    CameraPlan,
    Components,
    NonFiniteStep,
    StepResult,
    Trainer,
    build_components,
    camera_plan,
    parameters_finite,
)
from sjc_core.turntable import render_turntable, view_picture

__all__ = [
    "PAAS_TERM",
    "CameraPlan",
    "Components",
    "LoadedRun",
    "RunFolder",
    "RunSummary",
    "SjcError",
    "StepResult",
    "Trainer",
    "build_components",
    "camera_plan",
    "default_run_dir",
    "load_run",
    "read_status",
    "render_turntable",
    "run",
    "view_picture",
    "write_status",
]


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


class _StopFlag:
    """Set by SIGINT so the loop stops between steps, never inside an optimizer update."""

    def __init__(self) -> None:
        self.raised = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.raised:  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        self.raised = True


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
    pending: list[StepResult] = []
    try:
        write_status(folder, state="running", step=trainer.step, steps=settings.steps)
        while trainer.step < settings.steps:
            pending.append(trainer.train_step())
            step = trainer.step
            wants_view = step % settings.view_every == 0 or step == settings.steps
            wants_checkpoint = step % settings.checkpoint_every == 0 or step == settings.steps
            if not (wants_view or wants_checkpoint or stop.raised or step % settings.log_every == 0):
                continue  # the step's values stay on the device: no wait for it
            try:
                Trainer.fetch(pending)
            except NonFiniteStep as exc:
                for result in pending[: pending.index(exc.result)]:  # the good steps keep their records
                    _log_step(folder, result.step, result)
                _stop_on_nan(folder, step, settings.steps, exc)
            for result in pending:
                _log_step(folder, result.step, result)
            result = pending[-1]
            pending.clear()
            terms = result.terms
            bar.update(step, _status_text(result, parts.prior))
            if wants_view:
                picture = view_picture(parts.prior, result.scored, result.depth)
                artifacts.write_image(folder.views / f"step_{step:06d}.png", picture)
            if wants_checkpoint:
                if not parameters_finite(parts.field):  # never keep a bad state as "the last good one"
                    _stop_on_nan(folder, step, settings.steps, FloatingPointError(f"the field's parameters became NaN or Inf by step {step}"))
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


def _stop_on_nan(folder: RunFolder, step: int, steps: int, exc: FloatingPointError) -> None:
    """Mark the run failed and stop it with one line that says what is kept."""
    kept = load_checkpoint(folder.checkpoint).step if folder.checkpoint.exists() else None
    keep_note = f"the last good checkpoint (step {kept}) is kept" if kept is not None else "no checkpoint was written yet"
    write_status(folder, state="failed", step=step, steps=steps, error=str(exc))
    raise SjcError(f"run stopped: {exc}; {keep_note} in {folder.checkpoint.parent}") from None


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


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
