"""The learning-rate decay shared by ``sjc run`` and ``sjc fit``.

A step's rate is its base rate times ``final_ratio ** (step / (steps - 1))``: the first
step takes the base rate, the last ``base * final_ratio``. One formula in one place so a
recipe's ``lr_final_ratio`` and ``sjc fit``'s mean the same thing. The factor is a host
float computed from the step index alone, so it needs no device read and a resumed run
continues the same curve.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def decay_factor(final_ratio: float, step: int, steps: int) -> float:
    """Multiplier of the base rate at 0-based ``step`` of ``steps``."""
    if final_ratio == 1.0:
        return 1.0
    return final_ratio ** (step / max(steps - 1, 1))


def apply_decay(optimizer: torch.optim.Optimizer, base_lrs: Sequence[float], factor: float) -> None:
    """Set every parameter group's rate to its base rate times ``factor``."""
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base * factor
