"""Time per step of the plain-torch splat rasteriser on the CPU (one thread).

Usage: python benchmarks/splat_raster.py [--sizes 64 128] [--splats 10000 50000] [--repeats 3]
Prints JSON: for each picture size and splat count, seconds per render (forward) and per
step (render + emptiness-style loss + backward), the (splat, pixel) pairs composited and
the splats' radius. The splats fill a ball of radius 0.5 seen from 1.5 away at 50 degrees,
each with standard deviation ``--scale`` (0.02 of the box: about a 1-pixel sigma at 64^2,
the size the demo's splats train to); cost grows with pairs, i.e. with splat area.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sjc_plugins.fields.gaussians import GaussianField
from sjc_plugins.fields.gaussians_options import GaussianOptions

from sjc_core.contracts import BuildContext
from sjc_core.render.cameras import intrinsics, look_at
from sjc_core.render.view import render_view


def measure(size: int, splats: int, scale: float, repeats: int) -> dict[str, float]:
    options = GaussianOptions(init_splats=splats, init_scale=scale, init_opacity=0.5, max_splats=max(splats, 50_000))
    field = GaussianField(options, BuildContext(channels=3, value_range=(-1.0, 1.0)))
    K, c2w = intrinsics(50.0, size, size), look_at(np.array([0.5, 0.6, 1.3]))
    forward, step, pairs = [], [], 0
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        out = render_view(field, K, c2w, size, size)
        rendered = time.perf_counter()
        loss = (out.image**2).sum() + torch.log1p(10 * out.weights).sum() / out.sample_count
        field.zero_grad(set_to_none=True)
        loss.backward()
        done = time.perf_counter()
        forward.append(rendered - start)
        step.append(done - start)
        pairs = out.sample_count
    return {
        "size": size,
        "splats": splats,
        "scale": scale,
        "pairs": pairs,
        "forward_s": round(float(np.median(forward[1:])), 4),
        "step_s": round(float(np.median(step[1:])), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--splats", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--scale", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(size, count, args.scale, args.repeats) for size in args.sizes for count in args.splats]
    print(json.dumps({"threads": args.threads, "torch": torch.__version__, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
