"""Which torch device a recipe's ``device`` setting means (shared by the 3D and 2D tools)."""

from __future__ import annotations

import torch

from sjc_core.errors import SjcError


def resolve_device(setting: str) -> torch.device:
    """auto -> cuda when available; asking for cuda without one is a user error."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise SjcError("device: 'cuda' requested but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(setting)


def as_device(device: torch.device | str) -> torch.device:
    """A torch device from a device or a recipe setting ('auto', 'cpu', 'cuda'): preflight
    checks get the setting, so that validating a recipe never imports torch needlessly."""
    return resolve_device(device) if isinstance(device, str) else torch.device(device)
