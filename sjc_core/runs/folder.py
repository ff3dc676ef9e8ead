"""The run folder on disk: its layout, status file, metrics log and checkpoints.

Apart from :mod:`sjc_core.runs.engine` so everything that reads or writes a run's folder sits
in one place (``sjc batch`` reads status without training anything). The checkpoint helpers
only need the trainer's type, so ``trainer`` is imported for annotations alone and never at
run time.

The rules for which folder a command may write into (:func:`check_run_folder`):

- a run folder (``recipe.toml``, ``status.json`` or a checkpoint in it) is continued only
  with ``--resume``, and only when that cannot lose anything: a run that had a checkpoint
  which is now missing is refused rather than trained again from step 0;
- a new or empty folder gets a new run; any other existing folder, or a file, is refused;
- while a process works in a folder it holds the folder's lock (``locks.folder_lock``);
  a status that says "running" under a free lock is a run that crashed (killed, power lost).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sjc_core.errors import SjcError
from sjc_core.files import atomic, locks
from sjc_core.inputs import MAX_STATE_BYTES, read_regular
from sjc_core.recipes.recipe import Recipe
from sjc_core.runs.checkpoint import (
    NonFiniteCheckpoint,
    load_checkpoint,
    read_checkpoint_step,
    restore_state,
    save_checkpoint,
)

if TYPE_CHECKING:
    from sjc_core.training.trainer import StepResult, Trainer


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
        try:
            return Path(json.loads(read_regular(self.source, MAX_STATE_BYTES))["base_dir"])
        except (SjcError, ValueError, KeyError, TypeError):
            return None

    def is_run(self) -> bool:
        """Whether an earlier ``sjc run`` wrote here (by files only sjc writes: a ``recipe.toml``
        or a ``status.json`` of the user's own is no proof)."""
        if self.checkpoint.exists() or self.base_dir() is not None:
            return True
        status = read_status(self)
        return status.get("state") in RUN_STATES and "steps" in status


RUN_STATES = ("running", "interrupted", "failed", "finished")
TENSORBOARD = "tensorboard"  # the event files' folder (--tensorboard), written by TensorBoard's own writer
# What sjc writes in a run folder (paths relative to it): none of them may be a symbolic link
RUN_ENTRIES = (
    locks.LOCK_NAME, "recipe.toml", "source.json", "status.json", "metrics.jsonl", "views",
    "checkpoints/last.safetensors", "final", "render", "mesh", TENSORBOARD,
)


def refuse_run_links(root: Path, *more: str) -> None:
    """One line naming the first link among a run folder's entries (and ``more``), before
    anything is written: sjc would otherwise write, or truncate, through it."""
    atomic.refuse_links(root, RUN_ENTRIES + more)


def default_run_dir(recipe: Recipe) -> Path:
    settings = recipe.settings
    return Path(settings.output) / f"{settings.name}-seed{settings.seed}"


def read_status(folder: RunFolder) -> dict[str, Any]:
    """The status file, or {} when it is missing, unreadable or not sjc's (a FIFO, a huge file)."""
    if not folder.status.exists():
        return {}
    try:
        status = json.loads(read_regular(folder.status, MAX_STATE_BYTES))
    except (SjcError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def write_status(folder: RunFolder, **status: Any) -> None:
    atomic.write_text(folder.status, json.dumps(status, indent=2) + "\n")


# ----------------------------------------------------------------------------- which folder may be written


def file_in_the_way(root: Path) -> Path | None:
    """``root`` or the nearest existing folder above it, when that is a file (mkdir would fail)."""
    for candidate in (root, *root.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def foreign_entries(root: Path) -> list[str]:
    """What ``root`` holds besides sjc's own lock file and temporary files."""
    try:
        names = sorted(p.name for p in root.iterdir())
    except OSError:
        return []
    return [n for n in names if n != locks.LOCK_NAME and not n.startswith(atomic.TEMP_PREFIX)]


def describe_entries(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_target_folder(root: Path, kind: str, choose: str) -> None:
    """Refuse a file (or a file above ``root``) and a non-empty folder without ``kind`` outputs.

    Call it only when ``root`` holds none of sjc's outputs of ``kind`` (the caller knows its
    own layout); ``choose`` tells the user how to pick another folder.
    """
    blocker = file_in_the_way(root)
    if blocker is not None:
        where = "" if blocker == root else f", so {root} cannot be created"
        raise SjcError(f"{blocker}: is a file, not a folder{where}; {choose}")
    if root.is_dir():
        others = foreign_entries(root)
        if others:
            raise SjcError(
                f"{root}: exists, is not empty and is not {kind} (it holds {describe_entries(others)}); "
                f"sjc writes only into a new or empty folder or {kind}; {choose}"
            )


@dataclass(frozen=True)
class FolderState:
    """What :func:`check_run_folder` found: start afresh or continue from the checkpoint."""

    resume_from_checkpoint: bool
    status: dict[str, Any]
    crashed: bool = False
    checkpoint_step: int | None = None

    @property
    def last_step(self) -> int | str:
        """The last step the folder records (status or checkpoint, whichever is later)."""
        return _last_step(self.status, self.checkpoint_step)


def _last_step(status: dict[str, Any], checkpoint_step: int | None) -> int | str:
    steps = [s for s in (status.get("step"), checkpoint_step) if isinstance(s, int)]
    return max(steps) if steps else "?"


CHOOSE_RUN_DIR = "choose another folder with --run-dir or --set name=..."


def check_run_folder(folder: RunFolder, resume: bool, hint: str, locked: bool = False) -> FolderState:
    """May ``sjc run`` (with ``resume``) write here? Refuses with one line when it may not.

    Called once before the plugins are built (a quick refusal) and again with ``locked``
    once this process holds the folder's lock (the answer that counts: nobody else can
    change the folder any more). ``hint`` is the command that continues the run.
    """
    root = folder.root
    blocker = file_in_the_way(root)
    if blocker is not None:
        where = "" if blocker == root else f", so the run folder {root} cannot be created"
        raise SjcError(f"{blocker}: is a file, not a folder{where}; {CHOOSE_RUN_DIR}")
    if not root.exists():
        if resume:
            raise SjcError(f"{root}: nothing to resume (no run folder); run without --resume to start it")
        return FolderState(False, {})
    refuse_run_links(root)
    if not locked:
        holder = locks.lock_holder(root)
        if holder is not None:
            raise locks.in_use_error(root, holder)
    if not folder.is_run():
        check_target_folder(root, "a run folder", CHOOSE_RUN_DIR)
        return FolderState(False, {})  # empty, or only a lock file: a new run (with --resume too)

    status = read_status(folder)
    state = status.get("state")
    step = status.get("step", "?")
    crashed = state == "running"  # its lock is free: the process that wrote this is gone
    has_checkpoint = folder.checkpoint.exists()
    checkpoint_step = read_checkpoint_step(folder.checkpoint) if has_checkpoint else None
    if not resume:
        if crashed:
            if checkpoint_step is not None:
                kept = f"last checkpoint step {checkpoint_step}"
            elif has_checkpoint:
                kept = f"its checkpoint {folder.checkpoint} cannot be read"
            else:
                kept = "no checkpoint was written; --resume starts it again"
            raise SjcError(
                f"{root}: already holds a run that crashed at step {_last_step(status, checkpoint_step)} ({kept}); "
                f"continue with: {hint}"
            )
        where = f" ({state} at step {step})" if state else ""
        if state == "finished":
            raise SjcError(f"{root}: already holds a run{where}; {CHOOSE_RUN_DIR}")
        raise SjcError(f"{root}: already holds a run{where}; continue it with: {hint}, or {CHOOSE_RUN_DIR}")
    if has_checkpoint:
        return FolderState(True, status, crashed, checkpoint_step)
    recorded = status.get("checkpoint_step")  # written since runs keep their status current
    had_checkpoint = (
        state == "finished"
        or (state == "interrupted" and "checkpoint_step" not in status)  # older runs: Ctrl-C always wrote one
        or (isinstance(recorded, int) and recorded > 0)
        or folder.final.exists()
    )
    if had_checkpoint:
        what = {"finished": "finished", "interrupted": "was interrupted"}.get(state or "", "reached")
        what = f"{what} at step {step}"
        raise SjcError(
            f"{root}: cannot resume: the run {what} but its checkpoint {folder.checkpoint} is missing, "
            f"and resuming would train it again from step 0 over its outputs; start a new run in another folder "
            f"(--run-dir), or delete {root} to train it again"
        )
    return FolderState(False, status, crashed)  # stopped before its first checkpoint: nothing is lost


def _restore(trainer: Trainer, folder: RunFolder, note: Callable[[str], None] | None = None) -> None:
    try:
        snapshot = load_checkpoint(folder.checkpoint)
    except NonFiniteCheckpoint as exc:  # sjc keeps one checkpoint: there is no earlier good one
        raise SjcError(
            f"{exc.problems[0]}; cannot resume from it, and sjc keeps no earlier checkpoint to fall back to; "
            f"start a new run in another folder (--run-dir)"
        ) from None
    restore_state(
        folder.checkpoint,
        snapshot,
        trainer.parts.field,
        trainer.optimizer,
        trainer.camera_rng,
        trainer.noise_rng,
    )
    trainer.step = snapshot.step
    record = snapshot.extra.get(RECORD_KEY)
    _truncate_metrics(folder.metrics, snapshot.step, note, record if isinstance(record, dict) else None)


RECORD_KEY = "record"  # checkpoint extra: the metrics record of the checkpoint's own step


def _truncate_metrics(
    path: Path, step: int, note: Callable[[str], None] | None = None, record: dict[str, Any] | None = None
) -> None:
    """Drop records after the checkpoint (a crash can log steps it never saved).

    A last line that is not JSON was cut off (a full disk, a kill mid-write): it alone is
    dropped, with a note. Any other line that is not a record is a one-line error. When the
    checkpoint's own step has no record left, ``record`` (the one the checkpoint kept) is
    written back, so no step's record is lost for good.
    """
    if not path.exists():
        return
    lines = read_regular(path, None).decode("utf-8", errors="replace").split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    kept = []
    steps_kept = set()
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            parsed = json.loads(line)
            record_step = parsed.get("step", 0)
            if not isinstance(record_step, int):
                raise ValueError("no step")
        except (ValueError, AttributeError):
            if index == last:
                if note is not None:
                    note(f"sjc: note: {path}: dropped its cut-off last line ({len(line)} characters, not a whole record)")
                continue
            raise SjcError(f"{path}:{index + 1}: not a metrics record; fix or delete that line, then resume again") from None
        if record_step <= step:
            kept.append(line)
            steps_kept.add(record_step)
    if record is not None and record.get("step") == step and step not in steps_kept:
        kept.append(json.dumps(record))
        if note is not None:
            note(f"sjc: note: {path}: restored the record of step {step} from the checkpoint")
    atomic.write_text(path, "".join(line + "\n" for line in kept))


def _last_record(path: Path, step: int) -> dict[str, Any] | None:
    """The metrics file's last record when it is that of ``step`` (read from the end: cheap)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - 65536))
            tail = handle.read().decode("utf-8", errors="replace").rstrip("\n").rsplit("\n", 1)[-1]
        record = json.loads(tail)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("step") == step else None


def _save(trainer: Trainer, folder: RunFolder) -> None:
    # run_info: what `sjc export-mesh` needs to rebuild the field without the prior
    from sjc_core.runs.checkpoint import describe_run

    extra: dict[str, Any] = {"steps": trainer.recipe.settings.steps}
    record = _last_record(folder.metrics, trainer.step) if folder.metrics.is_file() else None
    if record is not None:  # restored on resume if the metrics file loses it (a cut-off line)
        extra[RECORD_KEY] = record
    save_checkpoint(
        folder.checkpoint,
        trainer.step,
        trainer.parts.field,
        trainer.optimizer,
        trainer.camera_rng,
        trainer.noise_rng,
        extra=extra,
        run_info=describe_run(trainer.parts.prior, trainer.plan.radius),
    )


def _log_step(folder: RunFolder, step: int, result: StepResult) -> None:
    atomic.append_jsonl(
        folder.metrics,
        {
            "step": step,
            "sigma": result.sigma,
            "lr": result.lr,
            "view": result.label,
            "terms": result.terms,
            "seconds": {k: round(v, 5) for k, v in result.seconds.items()},
        },
    )
