"""Checkpoints in safetensors: field parameters, optimizer state and RNG state, atomically.

Tensors go in the file; everything that is not a tensor (step, optimizer hyper-parameters,
numpy generator state) goes in its string metadata as JSON, so a checkpoint is one file
that either exists whole or not at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sjc_core.artifacts import atomic_path
from sjc_core.errors import SjcError

FIELD_PREFIX = "field."
OPTIM_PREFIX = "optim."


@dataclass
class Snapshot:
    """What a checkpoint restores."""

    step: int
    field_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    numpy_state: dict[str, Any] | None
    torch_state: torch.Tensor | None
    extra: dict[str, Any]


def save_checkpoint(
    path: Path,
    step: int,
    field: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    numpy_rng: np.random.Generator | None = None,
    torch_rng: torch.Generator | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    tensors = {FIELD_PREFIX + k: v.detach().cpu().contiguous() for k, v in field.state_dict().items()}
    meta: dict[str, str] = {"step": str(step), "extra": json.dumps(extra or {})}
    if optimizer is not None:
        state = optimizer.state_dict()
        for index, slots in state["state"].items():
            for slot, value in slots.items():
                tensors[f"{OPTIM_PREFIX}{index}.{slot}"] = torch.as_tensor(value).detach().cpu().contiguous()
        meta["optim_groups"] = json.dumps(state["param_groups"])
    if numpy_rng is not None:
        meta["numpy_rng"] = json.dumps(numpy_rng.bit_generator.state)
    if torch_rng is not None:
        tensors["rng.torch"] = torch_rng.get_state()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_checkpoint(path: Path) -> Snapshot:
    """Read a checkpoint; a damaged or foreign file is a one-line SjcError."""
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            meta = json.loads(handle.read(header_len)).get("__metadata__", {})
    except (OSError, SafetensorError, ValueError) as exc:
        raise SjcError(f"{path}: not a readable checkpoint ({exc})") from None
    if "step" not in meta:
        raise SjcError(f"{path}: not an sjc checkpoint (no step recorded)")
    field_state = {k[len(FIELD_PREFIX):]: v for k, v in tensors.items() if k.startswith(FIELD_PREFIX)}
    optimizer_state = None
    if "optim_groups" in meta:
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(OPTIM_PREFIX):
                index, slot = key[len(OPTIM_PREFIX):].split(".", 1)
                slots.setdefault(int(index), {})[slot] = value
        optimizer_state = {"state": slots, "param_groups": json.loads(meta["optim_groups"])}
    return Snapshot(
        step=int(meta["step"]),
        field_state=field_state,
        optimizer_state=optimizer_state,
        numpy_state=json.loads(meta["numpy_rng"]) if "numpy_rng" in meta else None,
        torch_state=tensors.get("rng.torch"),
        extra=json.loads(meta.get("extra", "{}")),
    )
