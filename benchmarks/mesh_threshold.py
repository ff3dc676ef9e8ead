"""Which automatic threshold should `sjc export-mesh` take? Coverage, spill and colour per quantile.

    python benchmarks/mesh_threshold.py runs/demo-seed0 [more run folders] --quantiles 0.5 0.3 0.2 0.1 0.05 0.02

`sjc export-mesh` without ``--threshold`` cuts the density at a quantile of the densities
where rays from eight views turn half opaque (:func:`sjc_core.mesh.extract.surface_threshold`). For
each run (a pixel-prior run: its field holds colours) and each quantile this extracts the
mesh as the export does (vertex colours from the field's features half a voxel inside),
draws it at the four cameras of ``scripts/mesh_picture.py`` and the field beside it, and
reports:

- ``coverage``: share of the pixels the field renders at least half opaque that the mesh covers
  (holes lower it);
- ``outside``: share of the mesh's pixels where the field is less than half opaque (floaters);
- ``psnr_db``: the mesh's picture against the field's render over the mesh's pixels.

Prints a table, then a line ``JSON:`` and every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def field_pictures(run: Any, poses: list[np.ndarray], size: int, fov: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """(colour in [0, 1] [H, W, 3], opacity >= 1/2 [H, W]) of the field at each pose."""
    from sjc_core.render.cameras import intrinsics
    from sjc_core.render.view import render_view

    low, high = run.value_range
    K = intrinsics(fov, size, size)
    out = []
    with torch.no_grad():
        for c2w in poses:
            render = render_view(run.field, K, c2w, size, size, subpixel=2, keep_weights=False)
            colour = np.clip((render.image[:3].permute(1, 2, 0).double().cpu().numpy() - low) / (high - low), 0, 1)
            out.append((colour, render.opacity.cpu().numpy() >= 0.5))
    return out


def measure(run_dir: Path, quantiles: list[float], size: int, fov: float) -> dict[str, Any]:
    import trimesh
    from mesh_picture import cameras, draw

    from sjc_core.mesh import extract as mesh
    from sjc_core.mesh.colors import feature_colors
    from sjc_core.mesh.export import load_mesh_run
    from sjc_core.mesh.raster import psnr
    from sjc_core.plugins import default_registry

    run = load_mesh_run(run_dir, default_registry(), "features")
    if run.value_range is None:
        raise SystemExit(f"{run_dir}: a latent-prior run; its field's colours need the prior's decoder")
    run.field.eval()
    poses = cameras(1.6, 20.0)
    fields = field_pictures(run, poses, size, fov)
    grid = mesh.density_grid(run.field)
    voxel = mesh.native_voxel(run.field, float(grid.spacing.mean()))
    rows = []
    for quantile in quantiles:
        level = mesh.surface_threshold(run.field, mesh.color_views(run.radius, 8), quantile=quantile)
        if level is None:
            rows.append({"quantile": quantile, "threshold": None})
            continue
        vertices, faces, normals = mesh.marching_cubes(grid, level)
        colours = feature_colors(run.field, vertices, normals, run.value_range, inset=voxel / 2)
        shape = trimesh.Trimesh(vertices, faces, vertex_colors=colours, process=False)
        coverage, outside, scores = [], [], []
        for (colour, opaque), c2w in zip(fields, poses):
            picture = draw(shape, c2w, size, fov)
            covered = picture.mask > 0.5
            coverage.append((covered & opaque).sum() / max(opaque.sum(), 1))
            outside.append((covered & ~opaque).sum() / max(covered.sum(), 1))
            scores.append(psnr(picture.rgb, colour, picture.mask))
        rows.append({
            "quantile": quantile,
            "threshold": round(level, 3),
            "faces": len(faces),
            "components": len(shape.split(only_watertight=False)),
            "coverage": round(float(np.mean(coverage)), 4),
            "outside": round(float(np.mean(outside)), 4),
            "psnr_db": round(float(np.mean(scores)), 2),
        })
    return {"run": str(run_dir), "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders of pixel-prior runs")
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.5, 0.3, 0.2, 0.1, 0.05, 0.02])
    parser.add_argument("--size", type=int, default=96, help="side of each view (pixels)")
    parser.add_argument("--fov", type=float, default=45.0)
    args = parser.parse_args()
    if any(not 0.0 <= q <= 1.0 for q in args.quantiles):
        parser.error("--quantiles: each must lie in [0, 1]")
    results = [measure(run, args.quantiles, args.size, args.fov) for run in args.runs]
    print(f"{'run':<28} {'quantile':>8} {'threshold':>9} {'faces':>7} {'parts':>5} {'coverage':>8} {'outside':>7} {'psnr':>6}")
    for result in results:
        for row in result["rows"]:
            if row["threshold"] is None:
                print(f"{Path(result['run']).name:<28} {row['quantile']:>8} {'none':>9}")
                continue
            print(f"{Path(result['run']).name:<28} {row['quantile']:>8} {row['threshold']:>9.2f} {row['faces']:>7} "
                  f"{row['components']:>5} {row['coverage']:>8.3f} {row['outside']:>7.3f} {row['psnr_db']:>6.2f}")
    print("JSON:")
    print(json.dumps({"benchmark": "benchmarks/mesh_threshold.py", "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
