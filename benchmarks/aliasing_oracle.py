"""What the independent suite's aliasing costs a perfect reconstruction.

    python benchmarks/aliasing_oracle.py [--suite data/suite] [--objects vase lamp rock toy]

The independent renderer (``scripts/make_independent_suite.py``) takes one ray through each
pixel centre, so its held-out pictures carry texture and silhouette detail finer than a
pixel, aliased. This script re-traces every held-out view with the true shapes and
textures on a 4x4 lattice of sub-pixel rays and scores two "oracle" pictures against the
stored ones: the average over the whole pixel (what a perfect reconstruction that is
band-limited at the pixel's size would show) and the average of the four central rays
(detail resolved to half a pixel). A field that renders one ray per pixel can beat the
first by learning sub-pixel detail from the other views; the gap between the two oracles
says how much of the held-out PSNR lives below the pixel size. Prints JSON (pooled
held-out PSNR in dB, RGBA pictures composited on white as the suite scores them).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import make_independent_suite as drawn  # a script, not a package: found through sys.path
from object_suite import psnr_pooled  # the suite benchmark's own pooling

SUPERSAMPLE = 4


def on_white(rgba: np.ndarray) -> np.ndarray:
    """RGB of a picture, RGBA composited on white (how the suite reads its pictures)."""
    if rgba.shape[-1] == 4:
        return rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
    return rgba[..., :3]


def oracle(name: str, suite: Path) -> dict[str, float]:
    """Pooled PSNR of the whole-pixel and half-pixel averages against the held-out pictures."""
    obj = drawn.OBJECTS[name]
    meta = json.loads((suite / name / "transforms_test.json").read_text())
    fov_deg = math.degrees(meta["camera_angle_x"])
    whole, half = [], []
    for frame in meta["frames"]:
        stored = iio.imread(suite / name / (frame["file_path"] + ".png")).astype(np.float64) / 255.0
        size = stored.shape[0]
        fine = drawn.trace(obj, np.asarray(frame["transform_matrix"]), size * SUPERSAMPLE, fov_deg)
        cells = fine.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 4)
        middle = slice(SUPERSAMPLE // 2 - 1, SUPERSAMPLE // 2 + 1)
        target = on_white(stored)
        whole.append(float(np.mean((on_white(cells.mean(axis=(1, 3))) - target) ** 2)))
        half.append(float(np.mean((on_white(cells[:, middle, :, middle].mean(axis=(1, 3))) - target) ** 2)))
    return {"pixel_average_db": round(psnr_pooled(whole), 2), "half_pixel_average_db": round(psnr_pooled(half), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=ROOT / "data" / "suite")
    parser.add_argument("--objects", nargs="+", default=list(drawn.OBJECTS), choices=list(drawn.OBJECTS))
    args = parser.parse_args(argv)
    results = {}
    for name in args.objects:
        if not (args.suite / name / "transforms_test.json").is_file():
            raise SystemExit(f"{args.suite / name}: no transforms_test.json (draw it: python scripts/make_independent_suite.py)")
        results[name] = oracle(name, args.suite)
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    print(json.dumps({"suite": str(args.suite), "supersample": SUPERSAMPLE, "objects": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
