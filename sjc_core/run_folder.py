"""The run folder on disk: its layout, status file, metrics log and checkpoints.

Split out of ``engine`` so everything that reads or writes a run's folder sits in one place
(``sjc batch`` reads status without training anything). The checkpoint helpers only need
the trainer's type, so ``trainer`` is imported for annotations alone and never at run time.
``sjc_core.engine`` re-exports the public names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sjc_core import artifacts
from sjc_core.checkpoint import load_checkpoint, save_checkpoint
from sjc_core.errors import SjcError
from sjc_core.recipe import Recipe

if TYPE_CHECKING:
    from sjc_core.trainer import StepResult, Trainer


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
