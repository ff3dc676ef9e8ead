"""Pictures of meshes from four sides, without OpenGL (for the README's docs/ pictures).

Each mesh is one row of four views, drawn by ``sjc_core.mesh.raster`` (a z-buffered
numpy rasteriser): vertex-coloured meshes (PLY, OBJ, GLB) and UV-textured ones (OBJ with
its MTL and PNG, GLB) alike. Unlit by default, like the field's own renders; ``--shade``
adds a diffuse light. With ``--field RUN_DIR`` (a run of a pixel prior) the first row is
the field rendered at the same cameras, and each mesh's PSNR against it is printed, over
the pixels the mesh covers.

    sjc export-mesh runs/demo-seed0                      # mesh/mesh.ply, vertex colours
    sjc export-mesh runs/demo-seed0 --texture 1024       # mesh/textured.{obj,mtl,png,glb}
    python scripts/mesh_picture.py runs/demo-seed0/mesh/textured.glb runs/demo-seed0/mesh/mesh.ply \\
        docs/mesh_textured_demo.png --field runs/demo-seed0 --labels "texture 1024" "vertex colours"
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image, ImageDraw

from sjc_core.mesh.raster import MeshPicture, psnr, render_mesh
from sjc_core.render.cameras import intrinsics, look_at

LIGHT = np.array([0.4, 0.8, 0.45])


def draw(mesh: trimesh.Trimesh, c2w: np.ndarray, size: int, fov: float = 45.0, supersample: int = 2,
         shade: bool = False) -> MeshPicture:
    """One view of a vertex-coloured or textured mesh (``rgb`` in [0, 1])."""
    K = intrinsics(fov, size, size)
    visual = mesh.visual
    light = LIGHT if shade else None
    if isinstance(visual, trimesh.visual.TextureVisuals) and visual.uv is not None:
        material = visual.material
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        texture = np.asarray(image.convert("RGB"))
        return render_mesh(mesh.vertices, mesh.faces, K, c2w, size, uv=np.asarray(visual.uv), texture=texture,
                           light=light, supersample=supersample)
    colours = np.asarray(visual.vertex_colors)[:, :3]
    return render_mesh(mesh.vertices, mesh.faces, K, c2w, size, colors=colours, light=light, supersample=supersample)


def cameras(distance: float, elevation: float) -> list[np.ndarray]:
    """Four cameras around the object, 90 degrees apart, ``elevation`` degrees up."""
    poses = []
    for azimuth in (0, 90, 180, 270):
        a, e = math.radians(azimuth - 90), math.radians(elevation)
        eye = distance * np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
        poses.append(look_at(eye))
    return poses


def field_views(run_dir: Path, poses: list[np.ndarray], size: int, fov: float) -> list[np.ndarray]:
    """The run's field rendered at ``poses`` (one ray per pixel, 2 x 2 averaged), as [size, size, 3] in [0, 1]."""
    import torch

    from sjc_core.mesh.export import load_mesh_run
    from sjc_core.plugins import default_registry
    from sjc_core.render.view import render_view

    run = load_mesh_run(run_dir, default_registry(), "features")
    if run.value_range is None:
        raise SystemExit("--field: only runs of pixel priors (whose fields hold colours) can be drawn here")
    low, high = run.value_range
    K = intrinsics(fov, size, size)
    out = []
    with torch.no_grad():
        for c2w in poses:
            image = render_view(run.field, K, c2w, size, size, subpixel=2, keep_weights=False).image
            out.append(np.clip((image[:3].permute(1, 2, 0).double().cpu().numpy() - low) / (high - low), 0, 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", type=Path, nargs="+", help="one or more meshes, then the output picture")
    parser.add_argument("--size", type=int, default=256, help="side of each view (pixels)")
    parser.add_argument("--distance", type=float, default=2.4, help="camera distance from the origin")
    parser.add_argument("--elevation", type=float, default=20.0, help="camera elevation (degrees)")
    parser.add_argument("--fov", type=float, default=45.0, help="field of view (degrees)")
    parser.add_argument("--shade", action="store_true", help="diffuse light instead of the bare colours")
    parser.add_argument("--field", type=Path, help="a run folder: draw its field first and print PSNRs against it")
    parser.add_argument("--labels", nargs="*", default=None, help="one label per mesh, written on its row")
    args = parser.parse_args()
    if len(args.paths) < 2:
        parser.error("give at least one mesh and the output picture")
    *mesh_paths, out = args.paths
    labels = args.labels or [p.name for p in mesh_paths]
    poses = cameras(args.distance, args.elevation)
    rows, names = [], []
    reference = field_views(args.field, poses, args.size, args.fov) if args.field else None
    if reference is not None:
        rows.append(np.concatenate(reference, axis=1))
        names.append("field")
    for path, label in zip(mesh_paths, labels):
        mesh = trimesh.load(path, force="mesh", process=False)
        pictures = [draw(mesh, c2w, args.size, args.fov, shade=args.shade) for c2w in poses]
        rows.append(np.concatenate([p.rgb for p in pictures], axis=1))
        names.append(label)
        if reference is not None:
            scores = [psnr(p.rgb, r, p.mask) for p, r in zip(pictures, reference)]
            print(f"{label}: PSNR against the field {np.mean(scores):.2f} dB over the mesh's pixels "
                  f"(views: {', '.join(f'{s:.2f}' for s in scores)})")
    picture = Image.fromarray((np.concatenate(rows, axis=0) * 255 + 0.5).astype(np.uint8))
    pen = ImageDraw.Draw(picture)
    for index, name in enumerate(names):
        box = pen.textbbox((6, index * args.size + 4), name)
        pen.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(255, 255, 255))
        pen.text((6, index * args.size + 4), name, fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
