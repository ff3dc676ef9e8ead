"""Hash-grid field benchmarks: encoder throughput, and a full SJC step against the voxel field.

1. Encode + backward throughput (points per second) of the hash encoding alone and of the
   field's density path (encoding + density MLP), at the CPU-default and GPU-default sizes.
2. A full SJC step at equal render settings for ``voxel`` and ``hashgrid``: render a
   64x64 view with C = 4 (latent-like features, identity activation), the surrogate
   ``-(g * image).sum()`` with a fixed upstream gradient g plus the emptiness loss, one
   backward, one Adamax step. Both fields use their defaults, so both march with the
   same step (grid_size 100, step_ratio 0.5). Fresh fields: every in-box sample has
   density softplus(-1) and passes the weight threshold (the costliest case).

With ``--device cuda`` the tinycudann backend is measured too when it imports.

Usage: python benchmarks/hashgrid_step.py [--threads 1] [--points 200000] [--steps 5]
Prints one JSON object. Times are medians; "cpu" columns are process CPU seconds, which
stay meaningful on a machine shared with other jobs, "wall" columns are elapsed time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def encoder_throughput(field, points: torch.Tensor, repeats: int, with_head: bool) -> dict[str, float]:
    """Points per second of forward + backward through the encoding (and density head)."""
    device = points.device

    def once() -> None:
        field.zero_grad(set_to_none=True)
        if with_head:
            out = field.density(points)
        else:
            out = field.encode(points)
        out.backward(torch.ones_like(out))

    once()  # warm-up
    walls, cpus = zip(*(timed(once, device) for _ in range(repeats)))
    n = points.shape[0]
    return {"points_per_s_wall": round(n / statistics.median(walls)), "points_per_s_cpu": round(n / statistics.median(cpus))}


def build(name: str, options: dict[str, Any], device: torch.device, channels: int = 4):
    from sjc_core.contracts import BuildContext
    from sjc_core.plugins import load_registry

    info = load_registry().get("fields", name)
    ctx = BuildContext(device=device, channels=channels, value_range=None, seed=0)
    return info.factory(info.options.model_validate(options), ctx).to(device)


def sjc_step_times(field, device: torch.device, steps: int, warmup: int, size: int = 64) -> dict[str, Any]:
    """Median phase times of a synthetic SJC step (render, backward, optimizer)."""
    from sjc_core.recipes.model import CameraConfig
    from sjc_core.render.cameras import intrinsics, sample_train_view
    from sjc_core.render.view import render_view
    from sjc_plugins.losses.emptiness import EmptinessLoss, EmptinessOptions

    rng = np.random.default_rng(0)
    views = [sample_train_view(rng, CameraConfig()) for _ in range(steps + warmup)]
    emptiness = EmptinessLoss(EmptinessOptions())
    optimizer = torch.optim.Adamax(field.param_groups(0.05), lr=0.05)
    h = torch.arange(size, dtype=torch.float32)
    c = torch.arange(4, dtype=torch.float32)
    g = (0.1 * torch.sin(0.3 * h[None, :, None] + 0.7 * h[None, None, :] + c[:, None, None])).to(device)
    phases: dict[str, list[float]] = {"render": [], "backward": [], "optimizer": []}
    cpu_total, samples = [], []
    for index, view in enumerate(views):
        k = intrinsics(view.fov_deg, size, size)
        holder: dict[str, Any] = {}

        def render() -> None:
            out = render_view(field, k, view.c2w, size, size)
            holder["loss"] = -(g * out.image).sum() + emptiness(out, 0.0)
            holder["samples"] = out.sample_count

        def backward() -> None:
            optimizer.zero_grad(set_to_none=True)
            holder["loss"].backward()

        t_render = timed(render, device)
        t_back = timed(backward, device)
        t_opt = timed(optimizer.step, device)
        if index >= warmup:
            phases["render"].append(t_render[0])
            phases["backward"].append(t_back[0])
            phases["optimizer"].append(t_opt[0])
            cpu_total.append(t_render[1] + t_back[1] + t_opt[1])
            samples.append(holder["samples"])
    walls = [sum(v) for v in zip(*phases.values())]
    return {
        "median_wall_s": {k: round(statistics.median(v), 4) for k, v in phases.items()},
        "median_step_wall_s": round(statistics.median(walls), 4),
        "median_step_cpu_s": round(statistics.median(cpu_total), 4),
        "median_samples_per_view": int(statistics.median(samples)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--skip-step", action="store_true", help="only the encoder throughput")
    parser.add_argument("--skip-encoder", action="store_true", help="only the SJC step")
    parser.add_argument("--fields", default="voxel,hashgrid", help="comma-separated fields for the SJC step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from sjc_plugins.fields.hashgrid import CPU_DEFAULTS, GPU_DEFAULTS, _import_tcnn

    backends = ["torch"]
    if device.type == "cuda" and _import_tcnn()[0] is not None:
        backends.append("tinycudann")
    report: dict[str, Any] = {
        "threads": args.threads,
        "device": str(device),
        "torch": torch.__version__,
        "points": args.points,
        "encoder": {},
        "sjc_step": {},
    }
    gen = torch.Generator().manual_seed(0)
    points = (torch.rand(args.points, 3, generator=gen) * 2 - 1).to(device)
    for backend in [] if args.skip_encoder else backends:
        for label, sizes in (("cpu_defaults", CPU_DEFAULTS), ("gpu_defaults", GPU_DEFAULTS)):
            field = build("hashgrid", {"backend": backend, **sizes}, device)
            key = f"{backend}/{label}"
            report["encoder"][key] = {
                "sizes": sizes,
                "encode+backward": encoder_throughput(field, points, args.repeats, with_head=False),
                "encode+density_mlp+backward": encoder_throughput(field, points, args.repeats, with_head=True),
            }
            print(f"{key}: {report['encoder'][key]}", file=sys.stderr)
    if not args.skip_step:
        wanted = args.fields.split(",")
        fields = [("voxel", {}, "voxel")] if "voxel" in wanted else []
        if "hashgrid" in wanted:
            fields += [("hashgrid", {"backend": b}, f"hashgrid/{b}") for b in backends]
        for name, options, key in fields:
            field = build(name, options, device)
            report["sjc_step"][key] = sjc_step_times(field, device, args.steps, args.warmup)
            print(f"{key}: {report['sjc_step'][key]}", file=sys.stderr)
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
