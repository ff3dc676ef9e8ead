"""The start-up block ``sjc run`` prints before its first step: what runs where and what was
built. While the plugins build, :func:`~sjc_core.training.trainer.build_components` names
each one (a model load or a kernel build can take a while, and a silent terminal cannot be
told from a hung one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sjc_core import __version__
from sjc_core.recipes.estimator_table import estimator_of
from sjc_core.recipes.recipe import Recipe


def device_line(device: torch.device) -> str:
    """``device: cpu (2 threads)`` or ``device: cuda:0, NVIDIA H100 80GB HBM3, 79.1 GiB``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        return f"device: cuda:{index}, {properties.name}, {properties.total_memory / 2**30:.1f} GiB"
    if device.type == "cpu":
        return f"device: cpu ({torch.get_num_threads()} threads)"
    return f"device: {device}"


def header_lines(recipe: Recipe, run_dir: Path, device: torch.device) -> list[str]:
    """Version, device and run folder: known before anything is built."""
    return [
        f"sjc {__version__} (torch {torch.__version__}), recipe {recipe.source}",
        device_line(device),
        f"run folder: {run_dir}",
    ]


def built_lines(recipe: Recipe, parts: Any) -> list[str]:
    """What was built: prior (channels, size, range), field (parameters), estimator, losses."""
    prior = parts.prior
    value_range = getattr(prior, "value_range", None)
    kind = "latents" if value_range is None else f"values in [{value_range[0]:g}, {value_range[1]:g}]"
    size = getattr(prior, "resolution", None)
    prior_text = f"prior: {recipe.prior.info.name}, {prior.channels} channels" + (f" at {size}x{size}" if size else "")
    parameters = sum(p.numel() for p in parts.field.parameters())
    losses = ", ".join(name for name, _ in parts.losses) or "none"
    return [
        f"{prior_text}, {kind}",
        f"field: {recipe.field.info.name}, {parameters:,} parameters",
        f"estimator: {estimator_of(recipe).info.name}; losses: {losses}; {recipe.settings.steps} steps",
    ]

