"""How recognisable is a finished run? PSNR of its renders on the data's held-out views.

Usage: python benchmarks/demo_quality.py runs/demo-seed0 [--data data/demo]
Prints JSON: the run's held-out PSNR and two baselines computed on the same views (a
uniform background-grey picture, and the mean training image), so the figure means
something: an object in the right place, with the right colours, beats both clearly.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    args = parser.parse_args()

    from sjc_core.fit.datasets import load_posed_images
    from sjc_core.plugins import load_registry
    from sjc_core.render.cameras import intrinsics
    from sjc_core.render.view import render_view
    from sjc_core.runs import engine

    run = engine.load_run(args.run_dir, load_registry())
    parts = run.parts
    train = load_posed_images(args.data, "train")
    test = load_posed_images(args.data, "test")
    size = test.height
    K = intrinsics(test.fov_deg, size, size)

    scores, grey_scores, mean_scores = [], [], []
    mean_image = train.images.mean(axis=0)
    with torch.no_grad():
        for image, pose in zip(test.images, test.c2w):
            render = render_view(parts.field, K, pose, size, size)
            rgb = parts.prior.to_rgb(render.image[None])[0].permute(1, 2, 0).numpy()
            scores.append(psnr(rgb, image))
            grey_scores.append(psnr(np.full_like(image, 0.5), image))
            mean_scores.append(psnr(mean_image, image))
    report = {
        "run": str(args.run_dir),
        "step": run.step,
        "held_out_views": len(test),
        "psnr_db": round(float(np.mean(scores)), 2),
        "baseline_grey_db": round(float(np.mean(grey_scores)), 2),
        "baseline_mean_train_image_db": round(float(np.mean(mean_scores)), 2),
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
