"""Helpers shared by the command modules (one loaded registry per process)."""

from __future__ import annotations

from sjc_core.plugins import Registry, default_registry


def registry() -> Registry:
    """The process's plugin registry, loaded on first use (commands share it with the core)."""
    return default_registry()
