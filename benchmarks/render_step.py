"""Time one SJC-shaped step of the voxel renderer and compare with the reference.

A step: render camera 0 of the parity case at 64x64 with C=4 latents from a 100^3 grid,
take one backward of ``-sum(g * image) + emptiness`` and one Adamax step (the engine's
:class:`sjc_core.training.optim.Adamax`, torch's numbers from one C pass). The parameters
are each scenario's from shared/parity/README.md section 2 (restored before every step so
all steps do the same work). Prints one JSON line per scenario: median/min/max wall seconds
over the timed steps, median CPU seconds of the process, peak RSS of the whole process
(``resource.getrusage``), and the speed-up over the reference's published single-thread
figures (0.75 / 0.74 / 0.35 s).

``--reference`` times a grid_sample re-implementation of the reference step instead (three
grid_sample calls, cumprod weights, two backward calls, separate density/colour
parameters); ``--compare`` alternates it with ours step by step, so that a busy machine
slows both alike and the ratio stays meaningful.

    python benchmarks/render_step.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REFERENCE_SECONDS = {"init": 0.75, "blob": 0.74, "blob_carved": 0.35}
ROOT = Path(__file__).resolve().parents[1]


def parity_case() -> dict[str, np.ndarray] | None:
    folder = os.environ.get("SJC_PARITY_DIR")
    path = (Path(folder) if folder else ROOT.parent / "shared" / "parity") / "voxel_render_case.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in ("cam0_K", "cam0_pose")}


def camera() -> tuple[np.ndarray, np.ndarray]:
    """Camera 0 of the parity case (rebuilt from its FoV and eye when the file is absent)."""
    case = parity_case()
    if case is not None:
        return case["cam0_K"], case["cam0_pose"]
    from sjc_core.render.cameras import intrinsics, look_at

    return intrinsics(65.33265554575144, 64, 64), look_at(np.array([1.4196, 0.1805, -0.4496]))


def parameters(scenario: str) -> dict[str, torch.Tensor]:
    """README section 2's parameters and upstream gradient, from the parity test's builder
    (the one checked against the stored sub-cubes), in the layout this benchmark uses."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_render_parity import rebuild_parameters

    p = rebuild_parameters(scenario)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return {
        "density": as_tensor(p["density"][0, 0]),
        "color": as_tensor(p["color"][0]),
        "bg": as_tensor(p["bg"]),
        "d_scale": torch.tensor(float(p["d_scale"]), dtype=torch.float32),
        "g": as_tensor(p["upstream_grad"][0]),
    }


def sjc_step(scenario: str, backend: str):  # type: ignore[no-untyped-def]
    from sjc_core.contracts import BuildContext
    from sjc_core.render.view import render_view
    from sjc_core.training.optim import Adamax
    from sjc_plugins.fields.voxel import VoxelOptions, build_voxel_field

    p = parameters(scenario)
    field = build_voxel_field(VoxelOptions(backend=backend, init_features=0.0), BuildContext(channels=4))
    features = p["color"].permute(1, 2, 3, 0)  # a view: the harness holds no extra copy of the grid
    optimizer = Adamax(field.param_groups(0.05))
    K, pose = camera()
    g = p["g"]

    def restore() -> None:
        with torch.no_grad():
            field.density_grid.copy_(p["density"])
            field.feature_grid.copy_(features)
            field.bg.copy_(p["bg"])
            field.d_scale.copy_(p["d_scale"])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = render_view(field, K, pose, 64, 64)
        emptiness = 1e4 * torch.log1p(10 * out.weights).sum() / out.sample_count
        loss = -(g * out.image).sum() + emptiness
        loss.backward()
        optimizer.step()

    return restore, step, field.backend


def reference_step(scenario: str):  # type: ignore[no-untyped-def]
    """The reference's sequence of operations, written for timing only."""
    from sjc_core.render.rays import camera_rays
    from sjc_core.render.spans import box_intersect

    p = parameters(scenario)
    density = torch.nn.Parameter(p["density"][None, None].clone())
    color = torch.nn.Parameter(p["color"][None].clone())
    bg = torch.nn.Parameter(p["bg"].clone())
    d_scale = torch.nn.Parameter(p["d_scale"].clone())
    groups = [{"params": [density]}, {"params": [color]}, {"params": [bg], "lr": 1e-4}, {"params": [d_scale]}]
    optimizer = torch.optim.Adamax(groups, lr=0.05)
    K, pose = camera()
    g = p["g"][None]
    step_size = 0.009999999776482582

    def restore() -> None:
        with torch.no_grad():
            density.copy_(p["density"][None, None])
            color.copy_(p["color"][None])
            bg.copy_(p["bg"])
            d_scale.copy_(p["d_scale"])

    def step() -> None:
        optimizer.zero_grad()
        ro64, rd64 = camera_rays(K, pose, 64, 64, keep_float64=True)
        t_min, t_max = box_intersect(ro64, rd64, torch.tensor([[-1.0] * 3, [1.0] * 3]))
        ro, rd = ro64.float(), rd64.float()
        n = ro.shape[0]
        k = int(((t_max - t_min).max() / step_size).item()) + 1
        ticks = (step_size * torch.arange(k)).view(k, 1, 1)
        dists = t_min.view(n, 1) + ticks
        pts = ro + rd * dists
        mask = (ticks < (t_max - t_min).view(n, 1)).squeeze(-1)
        sigma = torch.zeros(k, n)
        raw = F.grid_sample(density, pts[mask].view(1, -1, 1, 1, 3), align_corners=False).view(-1)
        sigma[mask] = F.softplus(raw * torch.exp(d_scale) - 1.0)
        alpha = 1 - torch.exp(-sigma * step_size)
        trans = torch.ones_like(alpha)
        trans[1:] = (1 - alpha).cumprod(dim=0)[:-1]
        w = alpha * trans
        keep = w > 1e-4
        feats = F.grid_sample(color, pts[keep].view(1, -1, 1, 1, 3), align_corners=False).view(4, -1).t()
        colours = torch.zeros(k, n, 4)
        colours[keep] = feats
        w3 = w.view(k, n, 1)
        rgb = (w3 * colours).sum(0)
        x, y, z = rd.t()
        u = torch.atan2((x**2 + y**2) ** 0.5, z) / torch.pi
        v = torch.atan2(y, x) / (torch.pi * 2) + 0.5
        uv = torch.stack([u, v], -1) * 2 - 1
        rgb = rgb + (1 - w3.sum(0)) * F.grid_sample(bg, uv.view(1, n, 1, 2), align_corners=False).view(4, n).t()
        image = rgb.t().reshape(1, 4, 64, 64)
        image.backward(-g, retain_graph=True)
        (1e4 * torch.log(1 + 10 * w).mean()).backward()
        optimizer.step()

    return restore, step, "reference"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, choices=(1, 2), default=1)
    parser.add_argument("--steps", type=int, default=12, help="timed steps (>= 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backend", default="auto", choices=("auto", "native", "torch", "generic"))
    parser.add_argument("--reference", action="store_true", help="time the reference-style step instead")
    parser.add_argument(
        "--compare", action="store_true",
        help="alternate reference-style and sjc steps in one process (same machine load for both)",
    )
    parser.add_argument("--scenarios", nargs="+", default=list(REFERENCE_SECONDS), choices=list(REFERENCE_SECONDS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.compare:
        compare(args)
        return
    for scenario in args.scenarios:
        restore, step, backend = reference_step(scenario) if args.reference else sjc_step(scenario, args.backend)
        walls, cpus = [], []
        for i in range(args.warmup + args.steps):
            restore()
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            if i >= args.warmup:
                walls.append(time.perf_counter() - w0)
                cpus.append(time.process_time() - c0)
        median = statistics.median(walls)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(
            json.dumps(
                {
                    "scenario": scenario,
                    "backend": backend,
                    "threads": args.threads,
                    "steps": args.steps,
                    "median_s": round(median, 4),
                    "min_s": round(min(walls), 4),
                    "max_s": round(max(walls), 4),
                    "cpu_median_s": round(statistics.median(cpus), 4),
                    "peak_rss_mb": round(rss_mb, 1),
                    "reference_s": REFERENCE_SECONDS[scenario],
                    "speedup_vs_reference": round(REFERENCE_SECONDS[scenario] / median, 2),
                }
            ),
            flush=True,
        )


def compare(args: argparse.Namespace) -> None:
    """Interleave the two implementations step by step, so that both see the same load."""
    for scenario in args.scenarios:
        runs = {"reference": reference_step(scenario), "sjc": sjc_step(scenario, args.backend)}
        walls: dict[str, list[float]] = {name: [] for name in runs}
        for i in range(args.warmup + args.steps):
            for name, (restore, step, _) in runs.items():
                restore()
                start = time.perf_counter()
                step()
                if i >= args.warmup:
                    walls[name].append(time.perf_counter() - start)
        ref, ours = (statistics.median(walls[name]) for name in ("reference", "sjc"))
        print(
            json.dumps(
                {
                    "scenario": scenario,
                    "backend": runs["sjc"][2],
                    "threads": args.threads,
                    "steps": args.steps,
                    "reference_median_s": round(ref, 4),
                    "sjc_median_s": round(ours, 4),
                    "speedup_same_conditions": round(ref / ours, 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
