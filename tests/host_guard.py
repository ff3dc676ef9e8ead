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
another device (a no-op ``.to`` is fine). A torch dispatch mode also flags ops whose output
shape depends on values (boolean indexing, ``nonzero``, ``repeat_interleave`` by counts,
``unique``), which torch calls from C++ where no Python method is involved.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

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


# aten ops whose output shape depends on tensor values: on a GPU each one waits for the
# device (they are called from C++ too, e.g. by boolean indexing, so a dispatch mode sees
# them where patching Python methods cannot).
DATA_DEPENDENT_OPS = frozenset(
    {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim", "argwhere"}
)


def _first_outside_torch(depth: int) -> Any:
    frame = sys._getframe(depth)
    while frame is not None and (frame.f_globals.get("__name__", "") or "").startswith("torch"):
        frame = frame.f_back
    return frame


class _DataDependentShapes(TorchDispatchMode):
    """Flags value-dependent shapes (boolean indexing, nonzero, repeat_interleave by
    counts, unique) when the nearest frame outside torch is guarded code."""

    def __init__(self, is_guarded: Any, report: Any) -> None:
        super().__init__()
        self.is_guarded, self.report = is_guarded, report

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        flagged = name in DATA_DEPENDENT_OPS
        if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            indices = args[1] if len(args) > 1 else ()
            flagged = any(torch.is_tensor(i) and i.dtype == torch.bool for i in indices or ())
        if name == "repeat_interleave" and len(args) > 1 and torch.is_tensor(args[1]):
            flagged = kwargs.get("output_size") is None
        if flagged:
            frame = _first_outside_torch(2)
            if frame is not None and self.is_guarded(frame):
                self.report(f"aten.{name} (shape depends on values)", frame)
        return func(*args, **kwargs)


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
        return frame_guarded(sys._getframe(2))  # 0: here, 1: the guard wrapper, 2: the tensor method's caller

    def report(what: str, frame: Any = None) -> None:
        frame = frame or sys._getframe(2)
        where = f"{what} from {frame.f_globals.get('__name__', '?')}:{frame.f_lineno}"
        violations.append(where)
        raise HostSyncError(f"host sync in sjc code: {where}")

    def frame_guarded(frame: Any) -> bool:
        module = frame.f_globals.get("__name__", "") or ""
        return _is_guarded(module, modules) and f"{module}.{frame.f_code.co_name}" not in allowed

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
        with _DataDependentShapes(frame_guarded, report):
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
