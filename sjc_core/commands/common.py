"""Helpers shared by the command modules (one loaded registry per process)."""

from __future__ import annotations

from sjc_core.plugins import Registry, default_registry


def registry() -> Registry:
    """The process's plugin registry, loaded on first use (commands share it with the core)."""
    return default_registry()


def count_flag(name: str, value: int, low: int, high: int, why: str = "") -> int:
    """A whole-number option within [low, high] (the same limit as its recipe key), else one line.

    Checked before any work starts: a huge count (``--frames 1000000000``) would otherwise
    run for days or fill memory first.
    """
    from sjc_core.errors import SjcError, shorten

    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        limit = f"{low:,} to {high:,}"
        raise SjcError(f"{name}: must be a whole number from {limit}{f' ({why})' if why else ''}, got {shorten(value)}")
    return value


def number_flag(name: str, value: float, low: float, high: float, low_open: bool = False) -> float:
    """A finite real option within [low, high] (``(low, high]`` with ``low_open``), else one line."""
    import math

    from sjc_core.errors import SjcError, shorten

    inside = math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not inside:
        bracket = "(" if low_open else "["
        raise SjcError(f"{name}: must be a finite number in {bracket}{low:g}, {high:g}], got {shorten(value)}")
    return float(value)


def device_problem(value: str) -> str | None:
    """The one line for a ``--device`` that names no usable device kind, else None."""
    from sjc_core.devices import check_device_setting
    from sjc_core.errors import shorten

    try:
        check_device_setting(value)
    except ValueError as exc:
        return f"--device: {exc} (got {shorten(value)})"
    return None
