"""Checkpoints in safetensors: field parameters, optimizer state and RNG state, atomically.

Tensors go in the file; everything that is not a tensor (step, optimizer hyper-parameters,
numpy generator state) goes in its string metadata as JSON, so a checkpoint is one file
that either exists whole or not at all. A checkpoint that cannot be read, has damaged
metadata or does not fit the field it is loaded into (another grid size, another field) is
a one-line :class:`SjcError` naming the file and the mismatch.

``run_info`` (optional, in the metadata) records what rebuilding the field needs from the
prior (its ``channels`` and ``value_range``) and the camera ``radius`` the run trained at,
so tools that only read the geometry (``sjc export-mesh``) need not build the prior: for
Stable Diffusion that is gigabytes of weights. Checkpoints written before it have none;
readers then fall back to building the prior.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sjc_core.errors import SjcError
from sjc_core.files.atomic import atomic_path
from sjc_core.inputs import check_regular

FIELD_PREFIX = "field."
OPTIM_PREFIX = "optim."
RUN_INFO_KEY = "run_info"


class NonFiniteCheckpoint(SjcError):
    """A checkpoint holds NaN or Inf: nothing rendered, exported or trained from it makes sense."""


@dataclass
class Snapshot:
    """What a checkpoint restores."""

    step: int
    field_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    numpy_state: dict[str, Any] | None
    torch_state: torch.Tensor | None
    extra: dict[str, Any]
    run_info: dict[str, Any] | None = None  # see the module docstring; None in older checkpoints


def describe_run(prior: Any, radius: float | None = None) -> dict[str, Any]:
    """``run_info`` for :func:`save_checkpoint`: the prior's channels and value range, the camera radius."""
    value_range = getattr(prior, "value_range", None)
    info: dict[str, Any] = {
        "channels": int(prior.channels),
        "value_range": None if value_range is None else [float(value_range[0]), float(value_range[1])],
    }
    if radius is not None:
        info["radius"] = float(radius)
    return info


def _check_run_info(info: Any) -> dict[str, Any]:
    """The ``run_info`` table, checked (a ValueError names what is wrong)."""
    if not isinstance(info, dict):
        raise ValueError("expected a table")
    channels = info.get("channels")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels {channels!r} is not a positive integer")
    value_range = info.get("value_range")
    if value_range is not None:
        if not (isinstance(value_range, (list, tuple)) and len(value_range) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value_range)
                and value_range[0] < value_range[1]):
            raise ValueError(f"value_range {value_range!r} is not [low, high]")
        info = {**info, "value_range": (float(value_range[0]), float(value_range[1]))}
    radius = info.get("radius")
    if radius is not None and (isinstance(radius, bool) or not isinstance(radius, (int, float)) or radius <= 0):
        raise ValueError(f"radius {radius!r} is not a positive number")
    return info


def save_checkpoint(
    path: Path,
    step: int,
    field: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    numpy_rng: np.random.Generator | None = None,
    torch_rng: torch.Generator | None = None,
    extra: dict[str, Any] | None = None,
    run_info: dict[str, Any] | None = None,
) -> Path:
    tensors = {FIELD_PREFIX + k: v.detach().cpu().contiguous() for k, v in field.state_dict().items()}
    meta: dict[str, str] = {"step": str(step), "extra": json.dumps(extra or {})}
    if run_info is not None:
        meta[RUN_INFO_KEY] = json.dumps(_check_run_info(run_info))
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
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except SafetensorError as exc:  # its I/O errors ("... (os error 28)") become OSErrors
            code = re.search(r"os error (\d+)", str(exc))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None
    return path


def _read_header(path: Path) -> dict[str, str]:
    try:
        check_regular(path, None)  # a FIFO would block open() below
    except SjcError as exc:
        raise ValueError(exc.problems[0].removeprefix(f"{path}: ")) from None
    with open(path, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        if not 0 < header_len <= 100_000_000:
            raise ValueError(f"header length {header_len}")
        meta = json.loads(handle.read(header_len)).get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a table")
    return meta


def read_checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint holds (header only, cheap), or None when it is missing or unreadable."""
    try:
        return int(_read_header(path)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_checkpoint(path: Path) -> Snapshot:
    """Read a checkpoint; a damaged or foreign file, or one holding NaN or Inf, is one line.

    Every tensor is checked for finite values here, once per load (render, export, resume),
    so no command works on a broken state and calls it good; :class:`NonFiniteCheckpoint`.
    """
    check_regular(path, None, "a checkpoint")
    try:
        tensors = load_file(str(path))
        meta = _read_header(path)
    except (OSError, SafetensorError, ValueError) as exc:
        raise SjcError(f"{path}: not a readable checkpoint ({exc})") from None
    if "step" not in meta:
        raise SjcError(f"{path}: not an sjc checkpoint (no step recorded)")
    key = "step"
    try:
        step = int(meta["step"])
        if step < 0:
            raise ValueError(f"negative step {step}")
        field_state = {k[len(FIELD_PREFIX):]: v for k, v in tensors.items() if k.startswith(FIELD_PREFIX)}
        optimizer_state = None
        if "optim_groups" in meta:
            key = "optim_groups"
            slots: dict[int, dict[str, torch.Tensor]] = {}
            for name, value in tensors.items():
                if name.startswith(OPTIM_PREFIX):
                    index, slot = name[len(OPTIM_PREFIX):].split(".", 1)
                    slots.setdefault(int(index), {})[slot] = value
            groups = json.loads(meta["optim_groups"])
            if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
                raise ValueError("expected a list of parameter groups")
            optimizer_state = {"state": slots, "param_groups": groups}
        key = "numpy_rng"
        numpy_state = json.loads(meta["numpy_rng"]) if "numpy_rng" in meta else None
        if numpy_state is not None and not isinstance(numpy_state, dict):
            raise ValueError("expected a table")
        key = "extra"
        extra = json.loads(meta.get("extra", "{}"))
        if not isinstance(extra, dict):
            raise ValueError("expected a table")
        key = RUN_INFO_KEY
        run_info = _check_run_info(json.loads(meta[RUN_INFO_KEY])) if RUN_INFO_KEY in meta else None
    except (ValueError, TypeError) as exc:
        raise SjcError(f"{path}: damaged checkpoint metadata ({key}: {exc})") from None
    bad = non_finite(tensors)
    if bad is not None:
        raise NonFiniteCheckpoint(f"{path}: holds NaN or Inf values (in {bad}); it is not a usable state")
    return Snapshot(
        step=step,
        field_state=field_state,
        optimizer_state=optimizer_state,
        numpy_state=numpy_state,
        torch_state=tensors.get("rng.torch"),
        extra=extra,
        run_info=run_info,
    )


def non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor with a NaN or Inf value, else None."""
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def _shape(shape: torch.Size) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def load_field_state(path: Path, field: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's field state into ``field``, or one line naming the mismatch.

    Names and shapes are compared first (a run whose ``field.grid_size`` or field plugin
    changed since the checkpoint was written does not fit it).
    """
    resize = getattr(field, "resize_for_state", None)  # fields whose sizes change while training
    if callable(resize):
        resize(state)
    wanted = field.state_dict()
    problems = []
    missing = [k for k in wanted if k not in state]
    unexpected = [k for k in state if k not in wanted]
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:3])}" + (" ..." if len(unexpected) > 3 else ""))
    for key, value in wanted.items():
        if key in state and tuple(state[key].shape) != tuple(value.shape):
            problems.append(f"{key} is {_shape(state[key].shape)} in the checkpoint but {_shape(value.shape)} in this field")
    if problems:
        raise SjcError(
            f"{path}: does not fit this run's field ({'; '.join(problems[:3])}); "
            "was the field (e.g. field.grid_size) changed since it was written?"
        )
    try:
        field.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise SjcError(f"{path}: does not fit this run's field ({str(exc).strip().splitlines()[-1].strip()})") from None


def restore_state(
    path: Path,
    snapshot: Snapshot,
    field: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    numpy_rng: np.random.Generator | None = None,
    torch_rng: torch.Generator | None = None,
) -> None:
    """Everything :func:`save_checkpoint` wrote back into place; a mismatch is one line."""
    load_field_state(path, field, snapshot.field_state)
    part = "optimizer state"
    try:
        if optimizer is not None and snapshot.optimizer_state is not None:
            optimizer.load_state_dict(snapshot.optimizer_state)
        part = "camera random state"
        if numpy_rng is not None and snapshot.numpy_state is not None:
            numpy_rng.bit_generator.state = snapshot.numpy_state
        part = "noise random state"
        if torch_rng is not None and snapshot.torch_state is not None:
            torch_rng.set_state(snapshot.torch_state)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
        detail = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise SjcError(f"{path}: its {part} does not fit this run ({detail})") from None
