"""The chaining loop: render a view, score it with PAAS, back-propagate through the renderer.

One step is: draw a training camera, render the field, ask the prior for the PAAS
gradient ``g`` at a scheduled sigma, and minimise ``-(g * y).sum() + regularisers`` with one
backward pass and one Adamax step. The loop owns the run folder: resolved recipe,
``metrics.jsonl``, periodic views, atomic checkpoints, resume, Ctrl-C and the turntable.

The step lives in :mod:`sjc_core.training.trainer`, the folder layout in
:mod:`sjc_core.runs.folder`, checkpoints in :mod:`sjc_core.runs.checkpoint` and the pictures
in :mod:`sjc_core.runs.turntable`; this module runs them.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sjc_core.contracts import Prior
from sjc_core.devices import resolve_device
from sjc_core.errors import SjcError
from sjc_core.files import atomic, locks
from sjc_core.files import pictures as files_pictures
from sjc_core.recipes import toml_out
from sjc_core.recipes.recipe import Recipe
from sjc_core.runs import startup
from sjc_core.runs.checkpoint import Snapshot, load_checkpoint, load_field_state, read_checkpoint_step
from sjc_core.runs.folder import (
    FolderState,
    RunFolder,
    _log_step,
    _restore,
    _save,
    check_run_folder,
    default_run_dir,
    write_status,
)
from sjc_core.runs.observer import RunObserver
from sjc_core.runs.progress import Progress
from sjc_core.runs.turntable import render_turntable, view_picture
from sjc_core.training.trainer import (
    CameraPlan,
    Components,
    NonFiniteStep,
    StepResult,
    Trainer,
    build_components,
    camera_plan,
    parameters_finite,
)


@dataclass
class LoadedRun:
    """A run folder brought back to life: its recipe, built plugins and last checkpoint."""

    folder: RunFolder
    recipe: Recipe
    parts: Components
    step: int
    plan: CameraPlan


def read_run(run_dir: Path, registry: Any) -> tuple[RunFolder, Recipe, Snapshot]:
    """A run folder's recipe and last checkpoint, read and checked before any model is built
    (a missing or damaged file is one line naming it)."""
    from sjc_core.recipes.recipe import load_recipe

    folder = RunFolder(Path(run_dir))
    if not folder.recipe.exists():
        raise SjcError(f"{run_dir}: not a run folder (no recipe.toml)")
    if not folder.checkpoint.exists():
        raise SjcError(f"{run_dir}: no checkpoint yet ({folder.checkpoint} is missing)")
    recipe = load_recipe(folder.recipe, registry, base_dir=folder.base_dir())
    return folder, recipe, load_checkpoint(folder.checkpoint)


def load_run(run_dir: Path, registry: Any) -> LoadedRun:
    """Rebuild a run's prior and field from its folder and load its last checkpoint.

    A checkpoint that cannot be read or does not fit the recipe's field is one line naming
    it and the mismatch. Callers that write into the folder hold it with :func:`using_run`.
    """
    folder, recipe, snapshot = read_run(run_dir, registry)
    parts = build_components(recipe, resolve_device(recipe.settings.device))
    load_field_state(folder.checkpoint, parts.field, snapshot.field_state)
    return LoadedRun(folder, recipe, parts, snapshot.step, camera_plan(recipe, parts.prior))


@contextmanager
def using_run(run_dir: Path, command: str, stream: TextIO | None = None) -> Iterator[RunFolder]:
    """Hold a run folder's lock while ``command`` (``sjc render``, ``sjc export-mesh``) uses it.

    Refuses a folder that is not a run, and one another process holds (a run still
    training), with one line naming the folder and that process's pid. In a folder this
    process may not write to, it only checks that nobody holds the lock.
    """
    folder = RunFolder(Path(run_dir))
    if not folder.root.is_dir() or not folder.recipe.exists():
        raise SjcError(f"{run_dir}: not a run folder (no recipe.toml)")
    if not folder.is_run():  # a recipe.toml of the user's own: take no lock among their files
        raise SjcError(f"{run_dir}: not a run folder (no status.json, source.json or checkpoint of sjc run)")
    with ExitStack() as stack:
        try:
            stack.enter_context(locks.folder_lock(folder.root, command))
            locked = True
        except atomic.WriteError:  # a read-only folder: nobody can be training there, but check
            holder = locks.lock_holder(folder.root)
            if holder is not None:
                raise locks.in_use_error(folder.root, holder) from None
            locked = False
        if locked:
            _remove_stale_temps(folder.root, stream or sys.stderr)
        yield folder


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
    resume_hint: str | None = None,
    observer: RunObserver | None = None,
) -> RunSummary:
    """Train a recipe into its run folder (or continue it with ``resume``).

    ``resume_hint`` is the command that continues this run (``sjc run`` passes the one the
    user typed, plus ``--resume``); messages that say how to continue print it. The folder
    is locked for the whole run; see :func:`~sjc_core.runs.folder.check_run_folder` for
    which folders are refused. Any failure to write is one line (an ``SjcError``).
    ``observer`` (a live viewer, TensorBoard) is called between steps; see
    :mod:`sjc_core.runs.observer`.
    """
    stream = stream or sys.stderr
    settings = recipe.settings
    folder = RunFolder(Path(run_dir) if run_dir else default_run_dir(recipe))
    hint = resume_hint or f"sjc run RECIPE --run-dir {shlex.quote(str(folder.root))} --resume"
    try:
        check_run_folder(folder, resume, hint)  # refuse at once, before any model is built
        device = resolve_device(settings.device)
        say = lambda line: print(line, file=stream, flush=True)  # noqa: E731
        for line in startup.header_lines(recipe, folder.root, device):
            say(line)
        # Build plugins before touching the folder: a missing model leaves nothing behind.
        parts = parts or build_components(recipe, device, note=say)
        for line in startup.built_lines(recipe, parts):
            say(line)
        trainer = Trainer.create(recipe, parts)
        try:
            folder.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SjcError(f"{folder.root}: cannot create the run folder ({atomic.os_cause(exc)})") from None
        with locks.folder_lock(folder.root, "sjc run"):
            _remove_stale_temps(folder.root, stream)
            found = check_run_folder(folder, resume, hint, locked=True)  # nobody can change it now
            return _train(trainer, folder, found, stream, hint, observer)
    except OSError as exc:  # anything not written through artifacts (reading, mkdir...)
        raise SjcError(atomic.describe_os_error(exc)) from None


def _train(
    trainer: Trainer, folder: RunFolder, found: FolderState, stream: TextIO, hint: str,
    observer: RunObserver | None = None,
) -> RunSummary:
    """The run itself, in a folder this process holds."""
    recipe, parts = trainer.recipe, trainer.parts
    settings = recipe.settings
    previous = found.last_step
    if found.resume_from_checkpoint:
        if found.crashed:
            print(
                f"{folder.root}: the run crashed at step {previous}; continuing from its last checkpoint "
                f"(step {found.checkpoint_step})",
                file=stream,
            )
        _restore(trainer, folder, note=lambda line: print(line, file=stream))
        print(f"resuming {folder.root} at step {trainer.step}/{settings.steps}", file=stream)
    else:
        if found.crashed:
            print(f"{folder.root}: the run crashed at step {previous}, before its first checkpoint; starting it again",
                  file=stream)
        # source.json first: it marks the folder as a run's (see RunFolder.is_run)
        atomic.write_text(folder.source, json.dumps({"base_dir": str(recipe.base_dir)}) + "\n")
        atomic.write_text(folder.recipe, toml_out.dumps(recipe.resolved()))
        if folder.metrics.exists():
            folder.metrics.unlink()
    if trainer.step >= settings.steps and found.status.get("state") == "finished":
        print(f"{folder.root} is already finished ({settings.steps} steps)", file=stream)
        return RunSummary(folder.root, "finished", trainer.step, 0.0, {})

    kept: int | None = trainer.step if found.resume_from_checkpoint else None  # the checkpoint on disk

    def status(state: str, **extra: Any) -> None:
        write_status(folder, state=state, step=trainer.step, steps=settings.steps, checkpoint_step=kept, **extra)

    started = time.perf_counter()
    stop = _StopFlag()
    previous_handler = signal.signal(signal.SIGINT, stop) if _main_thread() else None
    bar = Progress(settings.steps, start=trainer.step, stream=stream)
    bar_open = [True]

    def close_bar() -> None:  # once: on a terminal each close ends the progress line
        if bar_open[0]:
            bar_open[0] = False
            bar.close()

    terms: dict[str, float] = {}
    state = "finished"
    pending: list[StepResult] = []
    running = False
    try:
        status("running", pid=os.getpid())
        running = True
        while trainer.step < settings.steps:
            pending.append(trainer.train_step())
            step = trainer.step
            pausing = asked = False
            if observer is not None:
                observer.after_step(trainer, pending[-1])
                pausing, asked = observer.should_pause(), observer.wants_checkpoint()
            wants_view = step % settings.view_every == 0 or step == settings.steps
            wants_checkpoint = step % settings.checkpoint_every == 0 or step == settings.steps or asked
            if not (wants_view or wants_checkpoint or pausing or stop.raised or step % settings.log_every == 0):
                continue  # the step's values stay on the device: no wait for it
            try:
                Trainer.fetch(pending)
            except NonFiniteStep as exc:
                for result in pending[: pending.index(exc.result)]:  # the good steps keep their records
                    _log_step(folder, result.step, result)
                _stop_on_nan(folder, step, settings.steps, exc)
            for result in pending:
                _log_step(folder, result.step, result)
            if observer is not None:
                observer.after_log(list(pending))
            result = pending[-1]
            pending.clear()
            terms = result.terms
            bar.update(step, _status_text(result, parts.prior))
            if wants_view:
                picture = view_picture(parts.prior, result.scored, result.depth, result.opacity)
                files_pictures.write_image(folder.views / f"step_{step:06d}.png", picture)
                if observer is not None:
                    observer.after_view(step, picture)
            if wants_checkpoint:
                _save_checked(trainer, folder)
                kept = trainer.step
            status("running", pid=os.getpid())  # cheap, and what a crash leaves behind
            while pausing and observer is not None and observer.should_pause() and not stop.raised:
                observer.while_paused(trainer)  # the page still answers its camera
                if observer.wants_checkpoint():
                    _save_checked(trainer, folder)
                    kept = trainer.step
                    status("running", pid=os.getpid())
                time.sleep(0.05)
            if stop.raised:
                state = "interrupted"
                break
        close_bar()

        wall = time.perf_counter() - started
        if state == "interrupted":
            _save_checked(trainer, folder)
            kept = trainer.step
            status("interrupted")
            print(f"interrupted at step {trainer.step}; checkpoint written. Continue with: {hint}", file=stream)
            return RunSummary(folder.root, state, trainer.step, wall, terms)

        outputs = _finish(trainer, folder, stream)
        status("finished", final_terms=terms, wall_seconds=wall, outputs=outputs)
        return RunSummary(folder.root, "finished", trainer.step, wall, terms, outputs)
    except KeyboardInterrupt:  # Ctrl-C twice: stop now, without a checkpoint
        close_bar()
        kept = read_checkpoint_step(folder.checkpoint)
        stopped_at = trainer.step
        trainer_step_kept = kept if kept is not None else 0
        try:
            write_status(folder, state="interrupted", step=trainer_step_kept, steps=settings.steps,
                         checkpoint_step=kept, stopped_at=stopped_at)
        except SjcError:
            pass
        what = f"the last checkpoint (step {kept}) is kept" if kept is not None else "no checkpoint was written yet"
        print(f"stopped at once at step {stopped_at} (Ctrl-C twice), without a checkpoint; {what}. "
              f"Continue with: {hint}", file=stream)
        return RunSummary(folder.root, "interrupted", trainer_step_kept, time.perf_counter() - started, terms)
    except RunFailed:
        raise  # its status is written
    except (SjcError, OSError) as exc:  # a full disk, no permission, or a plugin that stopped the run
        close_bar()
        message = str(exc) if isinstance(exc, SjcError) else atomic.describe_os_error(exc)
        kept = read_checkpoint_step(folder.checkpoint)
        if running:
            try:
                status("failed", error=message)
            except SjcError:
                pass
        what = f"the last checkpoint (step {kept}) is kept" if kept is not None else "no checkpoint was written"
        fixable = isinstance(exc, (atomic.WriteError, OSError))  # the machine's problem: the same run can go on
        after = f"; once that is fixed, continue with: {hint}" if fixable else ""
        raise SjcError(f"{message}; the run stopped at step {trainer.step}, {what}{after}") from None
    finally:
        close_bar()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)


def _remove_stale_temps(root: Path, stream: TextIO) -> None:
    count, size = atomic.remove_stale_temps(root)
    if count:
        print(f"sjc: note: removed {count} temporary file{'s' if count > 1 else ''} ({size / 1e6:.1f} MB) "
              f"left in {root} by a process that was killed", file=stream)


def _save_checked(trainer: Trainer, folder: RunFolder) -> None:
    """Write the checkpoint, unless a parameter is NaN or Inf: never keep a bad state as
    "the last good one" (the run stops with one line instead)."""
    if not parameters_finite(trainer.parts.field):
        error = FloatingPointError(f"the field's parameters became NaN or Inf by step {trainer.step}")
        _stop_on_nan(folder, trainer.step, trainer.recipe.settings.steps, error)
    _save(trainer, folder)


class RunFailed(SjcError):
    """The run stopped and its status.json already says why (NaN or Inf)."""


def _stop_on_nan(folder: RunFolder, step: int, steps: int, exc: FloatingPointError) -> None:
    """Mark the run failed and stop it with one line that says what is kept."""
    kept = read_checkpoint_step(folder.checkpoint)
    keep_note = f"the last good checkpoint (step {kept}) is kept" if kept is not None else "no checkpoint was written yet"
    write_status(folder, state="failed", step=step, steps=steps, checkpoint_step=kept, error=str(exc))
    raise RunFailed(f"run stopped: {exc}; {keep_note} in {folder.checkpoint.parent}") from None


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
    strip_path = files_pictures.write_image(folder.final / "turntable_strip.png", files_pictures.strip(pictures, 8))
    last = files_pictures.write_image(folder.final / "last_view.png", pictures[len(pictures) // 2])
    print(f"wrote {video}", file=stream)
    export = getattr(trainer.parts.field, "export_files", None)  # e.g. the splats' .ply
    extra = export(folder.final) if callable(export) else {}
    return {"turntable": video.name, "strip": strip_path.name, "view": last.name, **extra}
