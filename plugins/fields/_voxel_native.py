"""A compiled per-ray kernel for the voxel field's render step (optional, CPU).

Array-at-a-time torch code spends most of a step writing and re-reading per-sample
temporaries. This kernel marches each ray once: trilinear gather of density, the
reference's alpha/transmittance/weight formulas in float32 and in the reference's order,
features only above the weight threshold, and the analytic backward that scatters density
and feature gradients straight into the grid gradients. It is C99 in ``csrc/voxel_render.c``
(package data; no Python or torch headers; GCC/Clang vector extensions only inside the
guarded AVX2 block), built on first use by :mod:`sjc_core.native` (system C compiler,
per-user cache, ctypes); ctypes releases the GIL during the call, so ray ranges can run on
several threads. Without a compiler the field falls back to its torch/scipy path.

On x86 CPUs with AVX2 the two purely arithmetic loops (cell weights; softplus, its slope and
alpha) run eight samples at a time through the compiler's vector extensions, chosen at run
time; they do the scalar code's operations in its order, so both paths give the same bits
(``sjc_voxel_simd(0)`` forces the scalar loops, for tests).
"""

from __future__ import annotations

import ctypes
from importlib.resources import files

from sjc_core import native

# The C source ships as package data (a real .c file, compiled by sjc_core.native on first use).
SOURCE = files("sjc_plugins.fields").joinpath("csrc/voxel_render.c").read_text(encoding="utf-8")

I64, F32, PTR = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
SIGNATURES = {
    "sjc_voxel_forward": (ctypes.c_int, [
        I64, I64, I64, PTR, PTR, PTR, PTR, PTR, PTR, PTR, PTR, I64, I64, I64, I64,
        F32, F32, F32, F32, ctypes.c_int, PTR, PTR, PTR, PTR, PTR, PTR, PTR, PTR,
    ]),
    "sjc_voxel_simd": (ctypes.c_int, [ctypes.c_int]),
    "sjc_voxel_backward": (ctypes.c_int, [
        I64, I64, I64, PTR, PTR, PTR, PTR, PTR, PTR, I64, I64, I64, I64,
        F32, F32, F32, ctypes.c_int, PTR, PTR, PTR, PTR, PTR, PTR, PTR, PTR, PTR, PTR, PTR, PTR,
    ]),
}


def kernel_or_reason() -> tuple[ctypes.CDLL | None, str]:
    """The loaded kernel, or None and why not (``SJC_NATIVE=0``, no compiler, ...)."""
    return native.library_or_reason("voxel", SOURCE, SIGNATURES)
