"""The live viewer as a run observer: the page follows the training thread, between steps.

With no page connected, :meth:`LiveObserver.after_step` asks viser for its clients and returns:
no render, no read from the device. With one, the field is rendered for the page when its
camera moved, or when a step finished and a refresh is due (see ``page.py`` for the rates);
the latest training view (the picture the prior scored, beside its depth) comes with the
step-driven refreshes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sjc_core.files import pictures as files_pictures
from sjc_core.runs.turntable import view_picture
from sjc_core.viewer.page import ViewerPage

if TYPE_CHECKING:
    from sjc_core.training.trainer import StepResult, Trainer


class LiveObserver:
    """Connects a :class:`ViewerPage` to a training loop (``sjc run --viewer``)."""

    def __init__(self, page: ViewerPage, steps: int) -> None:
        self.page = page
        self.steps = steps
        self.step = 0

    def _attach(self, trainer: Trainer) -> None:
        if self.page.field is None:
            self.page.field, self.page.prior = trainer.parts.field, trainer.parts.prior

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        self._attach(trainer)
        self.step = result.step
        if not self.page.connected():
            return
        due = self.page.step_refresh_due()
        began = time.monotonic()
        self.page.refresh(step_finished=True)
        if due:
            picture = view_picture(trainer.parts.prior, result.scored, result.depth, result.opacity)
            picture = with_target(picture, trainer.parts.prior, trainer.estimator)
            prompt = getattr(trainer.parts.prior, "describe_view", None)
            label = prompt(result.label) if callable(prompt) else f"{result.label} view"
            self.page.set_training_view(picture, f"training view at step {result.step}: {label}, sigma {result.sigma:.3g}")
            self.page.set_status(self._status())
            self.page.refresh_seconds = time.monotonic() - began  # the whole refresh sets the next one's time
        self.page.draw_curves()

    def after_log(self, results: list[StepResult]) -> None:
        for result in results:
            self.page.add_points(result.step, {**result.terms, "sigma": result.sigma, "lr": result.lr})

    def after_view(self, step: int, picture: np.ndarray) -> None:
        pass

    def should_pause(self) -> bool:
        return self.page.paused.is_set()

    def while_paused(self, trainer: Trainer) -> None:
        self._attach(trainer)
        self.page.set_status(self._status())
        self.page.refresh(step_finished=False)
        self.page.draw_curves(force=True)

    def wants_checkpoint(self) -> bool:
        if self.page.checkpoint_asked.is_set():
            self.page.checkpoint_asked.clear()
            self.page.set_status(f"checkpoint written at step {self.step}")
            return True
        return False

    def _status(self) -> str:
        state = "paused" if self.page.paused.is_set() else "training"
        return f"{state}: step {self.step} / {self.steps}"


def with_target(picture: np.ndarray, prior: Any, estimator: Any) -> np.ndarray:
    """The training view (scored | depth) followed by the estimator's denoised target, when the
    estimator keeps one (``denoised_target()``: paas, sds, ism); read only for a due refresh."""
    target_of = getattr(estimator, "denoised_target", None)
    target = target_of() if callable(target_of) else None
    if target is None:
        return picture
    with torch.no_grad():
        rgb = files_pictures.to_uint8(prior.to_rgb(target[:1].float())[0])
    return files_pictures.side_by_side(picture, rgb)


class PixelRange:
    """``to_rgb`` of a field fitted to pictures (features in [-1, 1], as the pixel priors')."""

    @staticmethod
    def to_rgb(x: Any) -> Any:
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


class LiveFitObserver:
    """Connects a :class:`ViewerPage` to ``sjc fit``'s loop (no training view: rays come from
    every picture at once)."""

    def __init__(self, page: ViewerPage, steps: int) -> None:
        self.page = page
        self.steps = steps
        self.step = 0

    def after_fit_step(self, field: Any, step: int, record: dict[str, Any]) -> None:
        self.page.field, self.page.prior = field, PixelRange()
        self.step = step
        self.page.add_points(step, {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))})
        if self.page.connected():
            if self.page.step_refresh_due():
                self.page.set_status(self._status())
            self.page.refresh(step_finished=True)
            self.page.draw_curves()

    def should_pause(self) -> bool:
        return self.page.paused.is_set()

    def while_fit_paused(self, field: Any) -> None:
        self.page.set_status(self._status())
        self.page.refresh(step_finished=False)
        self.page.draw_curves(force=True)

    def _status(self) -> str:
        state = "paused" if self.page.paused.is_set() else "fitting"
        return f"{state}: step {self.step} / {self.steps}"
