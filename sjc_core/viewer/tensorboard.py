"""TensorBoard event files of a run (``log.tensorboard`` or ``--tensorboard``), as an observer.

Scalars come from what the loop has already read back (each loss term, sigma, lr, every
step it logs); pictures are the training views the loop writes. Files go to
``RUN_DIR/tensorboard/`` through torch's standard ``SummaryWriter``, opened on the first
record (a run refused before training leaves no folder behind).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sjc_core.runs.folder import TENSORBOARD

if TYPE_CHECKING:
    from sjc_core.training.trainer import StepResult, Trainer


class TensorBoardObserver:
    def __init__(self, run_dir: Path) -> None:
        self.log_dir = Path(run_dir) / TENSORBOARD
        self._writer: Any = None

    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        pass

    def after_log(self, results: list[StepResult]) -> None:
        writer = self.writer()
        for result in results:
            for name, value in result.terms.items():
                writer.add_scalar(f"loss/{name}", value, result.step)
            writer.add_scalar("sigma", result.sigma, result.step)
            writer.add_scalar("lr", result.lr, result.step)

    def after_view(self, step: int, picture: np.ndarray) -> None:
        writer = self.writer()
        writer.add_image("view", picture, step, dataformats="HWC")
        writer.flush()

    def after_fit_step(self, field: Any, step: int, record: dict[str, Any]) -> None:
        """``sjc fit``: every number of the step's record (mse, psnr, lr, held-out psnr)."""
        writer = self.writer()
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)):
                writer.add_scalar(name, value, step)

    def while_fit_paused(self, field: Any) -> None:
        pass

    def should_pause(self) -> bool:
        return False

    def while_paused(self, trainer: Trainer) -> None:
        pass

    def wants_checkpoint(self) -> bool:
        return False

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
