"""Pictures of a coloured mesh from four sides, without OpenGL (for the README's docs/ pictures).

Faces are drawn back to front with PIL (painter's algorithm), each in its vertices' mean
colour times a simple diffuse shade, supersampled twice and reduced for smooth edges.

    sjc export-mesh runs/demo-seed0
    python scripts/mesh_picture.py runs/demo-seed0/mesh/mesh.ply docs/mesh_demo.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image, ImageDraw

from sjc_core.cameras import intrinsics, look_at

LIGHT = np.array([0.4, 0.8, 0.45]) / np.linalg.norm([0.4, 0.8, 0.45])


def draw(mesh: trimesh.Trimesh, c2w: np.ndarray, size: int, fov: float = 45.0, supersample: int = 2) -> Image.Image:
    side = size * supersample
    K = intrinsics(fov, side, side)
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    cam = np.c_[vertices, np.ones(len(vertices))] @ np.linalg.inv(c2w).T
    proj = cam[:, :3] @ K.T
    pixels = proj[:, :2] / proj[:, 2:3]
    depth = -cam[:, 2]
    normals = mesh.face_normals
    to_eye = c2w[:3, 3] - mesh.triangles_center
    facing = np.einsum("ij,ij->i", normals, to_eye)
    shade = 0.45 + 0.55 * np.clip(normals @ LIGHT, 0, 1)
    colours = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(float)[faces].mean(1) * shade[:, None]
    picture = Image.new("RGB", (side, side), (255, 255, 255))
    pen = ImageDraw.Draw(picture)
    for face in np.argsort(-depth[faces].mean(1)):
        if facing[face] <= 0:
            continue
        colour = tuple(int(min(255, c)) for c in colours[face])
        pen.polygon([tuple(pixels[i]) for i in faces[face]], fill=colour, outline=colour)
    return picture.resize((size, size), Image.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mesh", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=256, help="side of each view (pixels)")
    parser.add_argument("--distance", type=float, default=2.4, help="camera distance from the origin")
    parser.add_argument("--elevation", type=float, default=20.0, help="camera elevation (degrees)")
    args = parser.parse_args()
    mesh = trimesh.load(args.mesh, force="mesh", process=False)
    views = []
    for azimuth in (0, 90, 180, 270):
        a, e = math.radians(azimuth - 90), math.radians(args.elevation)
        eye = args.distance * np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
        views.append(np.asarray(draw(mesh, look_at(eye), args.size)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(views, axis=1)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
