"""``forbid_host_sync()``: fail a test when sjc code reads a tensor's value back to the host.

On an accelerator, ``t.item()``, ``float(t)``, ``if t:``, ``t.cpu()``, ``t.tolist()`` and
friends make the host wait for every queued kernel: one in a training step serialises the
whole step. On the CPU they are free, so a CPU test cannot see them by timing. This guard
sees them by the call itself, whatever the device::

    from host_guard import forbid_host_sync

    with forbid_host_sync():
        prior.denoise(x, sigma, cond)

Inside the block the listed ``torch.Tensor`` methods (and a few ``torch`` functions) raise
:class:`HostSyncError` when the *calling* frame belongs to one of ``modules`` (by default
``sjc_core`` and ``sjc_plugins``); calls from torch, diffusers, transformers or the test
itself go through untouched. A violation is also recorded, and the block raises on exit
if sjc code swallowed the error. ``Tensor.to`` is guarded only for a move to the CPU from
another device (a no-op ``.to`` is fine).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import torch

SJC_MODULES = ("sjc_core", "sjc_plugins")

# Methods that hand a tensor's value (or a decision on it) to Python.
TENSOR_METHODS = (
    "item",
    "cpu",
    "numpy",
    "tolist",
    "__float__",
    "__int__",
    "__bool__",
    "__index__",
    "__array__",
    "__format__",
    "__contains__",
    "equal",
    "allclose",
    "nonzero",
)
# torch functions that return Python values (or shapes that depend on values).
TORCH_FUNCTIONS = ("equal", "allclose", "is_nonzero", "nonzero")


class HostSyncError(AssertionError):
    """A guarded call made from sjc code inside :func:`forbid_host_sync`."""


def _is_guarded(module: str, modules: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in modules)


def _moves_to_cpu(tensor: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if tensor.device.type == "cpu":
        return False
    try:
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
    except Exception:
        return False
    return device is not None and torch.device(device).type == "cpu"


@contextlib.contextmanager
def forbid_host_sync(
    modules: Iterable[str] = SJC_MODULES,
    methods: Iterable[str] = TENSOR_METHODS,
    functions: Iterable[str] = TORCH_FUNCTIONS,
    allow: Iterable[str] = (),
) -> Iterator[list[str]]:
    """Patch ``torch.Tensor`` (and ``torch``) so that host reads from ``modules`` raise.

    ``allow`` names functions (``"module.function"``) whose reads are of host data by
    design, e.g. a helper that converts a camera pose the trainer built on the CPU.

    Yields the list of violations (``"Tensor.item from sjc_plugins.x:123"``), empty when clean.
    """
    modules = tuple(modules)
    allowed = frozenset(allow)
    violations: list[str] = []

    def guarded_caller() -> bool:
        frame = sys._getframe(3)
        module = frame.f_globals.get("__name__", "") or ""
        return _is_guarded(module, modules) and f"{module}.{frame.f_code.co_name}" not in allowed

    def report(what: str) -> None:
        frame = sys._getframe(2)
        where = f"{what} from {frame.f_globals.get('__name__', '?')}:{frame.f_lineno}"
        violations.append(where)
        raise HostSyncError(f"host sync in sjc code: {where}")

    def guard_method(name: str, original: Any) -> Any:
        @functools.wraps(original)
        def guarded(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if guarded_caller():
                report(f"Tensor.{name}")
            return original(self, *args, **kwargs)

        return guarded

    def guard_to(original: Any) -> Any:
        @functools.wraps(original)
        def guarded(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if guarded_caller() and _moves_to_cpu(self, args, kwargs):
                report("Tensor.to(cpu)")
            return original(self, *args, **kwargs)

        return guarded

    def guard_function(name: str, original: Any) -> Any:
        @functools.wraps(original)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if guarded_caller():
                report(f"torch.{name}")
            return original(*args, **kwargs)

        return guarded

    saved_methods: list[tuple[str, Any]] = []  # (name, own attribute or None when inherited)
    saved_functions: list[tuple[str, Any]] = []
    try:
        for name in (*methods, "to"):
            if not hasattr(torch.Tensor, name):
                continue
            saved_methods.append((name, torch.Tensor.__dict__.get(name)))
            original = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, guard_to(original) if name == "to" else guard_method(name, original))
        for name in functions:
            if hasattr(torch, name):
                saved_functions.append((name, getattr(torch, name)))
                setattr(torch, name, guard_function(name, getattr(torch, name)))
        yield violations
    finally:
        for name, own in reversed(saved_methods):
            if own is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, own)
        for name, original in reversed(saved_functions):
            setattr(torch, name, original)
    if violations:
        raise HostSyncError(f"host sync in sjc code: {'; '.join(violations)}")
