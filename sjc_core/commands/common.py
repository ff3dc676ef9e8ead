"""Helpers shared by the command modules (one loaded registry per process)."""

from __future__ import annotations

from functools import lru_cache

from sjc_core.plugins import Registry, load_registry


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The process's plugin registry, loaded on first use (commands share it)."""
    return load_registry()
