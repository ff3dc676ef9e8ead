"""A compiled per-ray kernel for the voxel field's render step (optional, CPU).

Array-at-a-time torch code spends most of a step writing and re-reading per-sample
temporaries. This kernel marches each ray once: trilinear gather of density, the
reference's alpha/transmittance/weight formulas in float32 and in the reference's order,
features only above the weight threshold, and the analytic backward that scatters density
and feature gradients straight into the grid gradients. It is C99 in ``csrc/voxel_render.c``
(package data; no Python or torch headers; GCC/Clang vector extensions only inside the
guarded AVX2 block), built on first use by :mod:`sjc_core.native` (system C compiler,
per-user cache, ctypes); ctypes releases the GIL during the call, so ray ranges can run on
several threads. Without a compiler the field falls back to its torch path.

On x86 CPUs with AVX2 the two purely arithmetic loops (cell weights; softplus, its slope and
alpha) run eight samples at a time through the compiler's vector extensions, chosen at run
time; they do the scalar code's operations in its order, so both paths give the same bits
(``sjc_voxel_simd(0)`` forces the scalar loops, for tests).
"""

from __future__ import annotations

import ctypes
import functools
from importlib.resources import files
from typing import Any

import numpy as np
import torch

from sjc_core.native import build as native
from sjc_core.render.samples import SampleBundle

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


def native_plan(field: Any, bundle: SampleBundle, org: torch.Tensor, direction: torch.Tensor) -> dict[str, Any]:
    """The kernel's inputs for a bundle (float32 CPU arrays; ray ranges split by samples)."""
    lib, _ = kernel_or_reason()
    threads = max(1, torch.get_num_threads())
    f32 = lambda t: t.detach().to(torch.float32).contiguous()  # noqa: E731
    order = None
    if bundle.order is not None:
        order = torch.from_numpy(np.ascontiguousarray(bundle.order, dtype=np.int64))
    counts = bundle.counts.numpy()
    in_order = counts if order is None else counts[bundle.order]
    return {
        "lib": lib, "n": bundle.n, "k": bundle.k,
        "order": order, "order_ptr": None if order is None else order.data_ptr(),
        "org": f32(org), "dir": f32(direction), "t_min": f32(bundle.t_min),
        "counts": bundle.counts.contiguous(),
        "ticks": f32(bundle.ticks), "xyz": field.grid_size,
        "shift": field.density_shift, "step": bundle.step, "threshold": field.weight_threshold,
        "activation": ACTIVATION_CODES[field.activation],
        "splits": _ray_splits(in_order, threads),
    }


ACTIVATION_CODES = {"identity": 0, "2*sigmoid-1": 1, "sigmoid": 2}


class NativeVoxelRender(torch.autograd.Function):
    """The voxel field's render node computed by the compiled per-ray kernel (the torch
    node's outputs, plus opacity and depth, summed on its way along each ray)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, density: torch.Tensor, features: torch.Tensor, d_scale: torch.Tensor, plan: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n, k = plan["n"], plan["k"]
        channels = features.shape[-1]
        rgb = torch.empty(n, channels)
        opacity = torch.empty(n)
        depth = torch.empty(n)
        w = torch.empty(n, k)
        raw = torch.empty(n, k)
        alpha = torch.empty(n, k)
        slope = torch.empty(n, k)
        feats = torch.empty(n, k, channels)  # written only where w > threshold
        dens = density.detach().contiguous()
        feat = features.detach().contiguous()
        scale = float(torch.exp(d_scale.detach()).item())
        ptr = lambda t: t.data_ptr()  # noqa: E731
        lib = plan["lib"]

        def run(r0: int, r1: int) -> None:
            status = lib.sjc_voxel_forward(
                r0, r1, k, plan["order_ptr"], ptr(plan["org"]), ptr(plan["dir"]), ptr(plan["t_min"]),
                ptr(plan["counts"]), ptr(plan["ticks"]), ptr(dens), ptr(feat), *plan["xyz"], channels,
                scale, plan["shift"], plan["step"], plan["threshold"], plan["activation"],
                ptr(rgb), ptr(opacity), ptr(depth), ptr(w), ptr(raw), ptr(alpha), ptr(slope), ptr(feats),
            )
            if status != 0:
                raise RuntimeError(f"voxel kernel failed ({status}): 1 to 64 channels, or out of memory")

        splits = plan["splits"]
        native.run_calls([functools.partial(run, a, b) for a, b in zip(splits, splits[1:])], len(splits) - 1)
        ctx.save_for_backward(w, raw, alpha, slope, feats)
        ctx.plan = plan
        ctx.scale = scale
        ctx.shapes = (density.shape, features.shape)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no [n, k] zeros
        return rgb, w, opacity, depth

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        grad_rgb: torch.Tensor | None,
        grad_w: torch.Tensor | None,
        grad_opacity: torch.Tensor | None,
        grad_depth: torch.Tensor | None,
    ) -> tuple[Any, ...]:
        w, raw, alpha, slope, feats = ctx.saved_tensors
        plan = ctx.plan
        n, k = plan["n"], plan["k"]
        channels = feats.shape[-1]
        g_rgb = torch.zeros(n, channels) if grad_rgb is None else grad_rgb.contiguous()
        g_w, g_opacity, g_depth = (None if g is None else g.contiguous() for g in (grad_w, grad_opacity, grad_depth))
        optional = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        splits = plan["splits"]
        parts = len(splits) - 1
        dens_shape, feat_shape = ctx.shapes
        grads = [(torch.zeros(dens_shape), torch.zeros(feat_shape)) for _ in range(parts)]
        partial = (ctypes.c_double * parts)()
        ptr = lambda t: t.data_ptr()  # noqa: E731
        lib = plan["lib"]

        def run(part: int, r0: int, r1: int) -> None:
            lib.sjc_voxel_backward(
                r0, r1, k, plan["order_ptr"], ptr(plan["org"]), ptr(plan["dir"]), ptr(plan["t_min"]),
                ptr(plan["counts"]), ptr(plan["ticks"]), *plan["xyz"], channels,
                ctx.scale, plan["step"], plan["threshold"], plan["activation"],
                ptr(g_rgb), optional(g_w), optional(g_opacity), optional(g_depth),
                ptr(w), ptr(raw), ptr(alpha), ptr(slope),
                ptr(feats), ptr(grads[part][0]), ptr(grads[part][1]),
                ctypes.byref(partial, part * ctypes.sizeof(ctypes.c_double)),
            )

        ranges = enumerate(zip(splits, splits[1:]))
        native.run_calls([functools.partial(run, i, a, b) for i, (a, b) in ranges], parts)
        grad_density, grad_features = grads[0]
        for extra_density, extra_features in grads[1:]:
            grad_density += extra_density
            grad_features += extra_features
        grad_scale = torch.tensor(sum(partial), dtype=torch.float32) if ctx.needs_input_grad[2] else None
        return grad_density, grad_features, grad_scale, None


def _ray_splits(counts: np.ndarray, parts: int) -> list[int]:
    """Ray boundaries giving each part about the same number of samples."""
    n = len(counts)
    if parts <= 1 or n < 1024:
        return [0, n]
    cum = np.cumsum(counts)
    targets = cum[-1] * np.arange(1, parts) / parts
    inner = np.searchsorted(cum, targets).tolist()
    return sorted({0, n, *[int(b) for b in inner]})
