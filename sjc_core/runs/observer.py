"""What may watch a run from outside the loop (a live viewer, TensorBoard): a small protocol.

The loop calls an observer in the training thread, between steps, never inside one; with no
observer the loop is exactly the plain loop. An observer must return quickly and must not
read device values in :meth:`RunObserver.after_step` unless someone is looking (a viewer with
a connected page); the loop's own reads happen before :meth:`RunObserver.after_log`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from sjc_core.training.trainer import StepResult, Trainer


class RunObserver(Protocol):
    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        """Every step; ``result.terms`` may still be empty (its values on the device)."""

    def after_log(self, results: list[StepResult]) -> None:
        """Steps whose terms the loop has just read back (``terms`` filled), oldest first."""

    def after_view(self, step: int, picture: np.ndarray) -> None:
        """The training view the loop has just written (picture beside depth, uint8 HxWx3)."""

    def should_pause(self) -> bool:
        """True while training should wait (the loop calls :meth:`while_paused` meanwhile)."""

    def while_paused(self, trainer: Trainer) -> None:
        """Called repeatedly while paused, so a page can still answer its camera."""

    def wants_checkpoint(self) -> bool:
        """True once per request to write a checkpoint now (the loop's own checkpoint code)."""


class FitObserver(Protocol):
    """The same idea for ``sjc fit``'s loop, which has no trainer: the field and the step's record."""

    def after_fit_step(self, field: Any, step: int, record: dict[str, Any]) -> None:
        """Every step, with the record the fit logs (host numbers: mse, psnr, lr, ...)."""

    def should_pause(self) -> bool:
        """True while the fit should wait (the loop calls :meth:`while_fit_paused` meanwhile)."""

    def while_fit_paused(self, field: Any) -> None:
        """Called repeatedly while paused."""


class Observers:
    """Several observers as one: each is called in order; any may pause or ask for a checkpoint."""

    def __init__(self, *observers: RunObserver) -> None:
        self.observers = [o for o in observers if o is not None]

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        for observer in self.observers:
            observer.after_step(trainer, result)

    def after_log(self, results: list[StepResult]) -> None:
        for observer in self.observers:
            observer.after_log(results)

    def after_view(self, step: int, picture: np.ndarray) -> None:
        for observer in self.observers:
            observer.after_view(step, picture)

    def should_pause(self) -> bool:
        return any(observer.should_pause() for observer in self.observers)

    def while_paused(self, trainer: Trainer) -> None:
        for observer in self.observers:
            observer.while_paused(trainer)

    def after_fit_step(self, field: Any, step: int, record: dict[str, Any]) -> None:
        for observer in self.observers:
            observer.after_fit_step(field, step, record)  # type: ignore[attr-defined]

    def while_fit_paused(self, field: Any) -> None:
        for observer in self.observers:
            observer.while_fit_paused(field)  # type: ignore[attr-defined]

    def wants_checkpoint(self) -> bool:
        asked = [observer.wants_checkpoint() for observer in self.observers]  # every request consumed
        return any(asked)
