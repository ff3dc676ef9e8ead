"""Which torch device a ``device`` setting means (recipes, ``sjc fit`` and ``sjc sample``).

A setting is ``auto`` (CUDA when available), ``cpu``, ``cuda`` (the current CUDA device) or
``cuda:N`` (device N, as ``CUDA_VISIBLE_DEVICES`` numbers them). Checking its spelling
imports no torch, so validating a recipe stays fast; resolving it does.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sjc_core.errors import SjcError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
MAX_DEVICE_INDEX = 1023
_SETTING = re.compile(r"(auto|cpu|cuda)(:(0|[1-9][0-9]{0,3}))?")


def check_device_setting(setting: str) -> str:
    """``setting`` when it names a device kind this program can use, else ValueError (which
    pydantic reports at the field's path, and the CLI flags at theirs)."""
    found = _SETTING.fullmatch(setting) if isinstance(setting, str) else None
    if found is None or (found.group(2) and found.group(1) != "cuda") or (
        found.group(3) and int(found.group(3)) > MAX_DEVICE_INDEX
    ):
        raise ValueError(f"must be {DEVICE_CHOICES}")
    return setting


def resolve_device(setting: str, where: str = "device") -> torch.device:
    """auto -> cuda when available; a CUDA device that this machine lacks is a user error
    naming how many there are."""
    import torch

    check_device_setting(setting)
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SjcError(f"{where}: '{setting}' requested but no CUDA device is available (use 'auto' or 'cpu')")
        index = setting.partition(":")[2]
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise SjcError(
                f"{where}: '{setting}' requested but this machine has {count} CUDA device(s): "
                f"cuda:0 to cuda:{count - 1} (CUDA_VISIBLE_DEVICES chooses which)"
            )
    return torch.device(setting)


def as_device(device: torch.device | str) -> torch.device:
    """A torch device from a device or a setting: preflight checks get the setting, so that
    validating a recipe never imports torch needlessly."""
    if isinstance(device, str):
        return resolve_device(device)
    import torch

    return torch.device(device)
