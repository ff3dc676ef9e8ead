"""Baked textures: colour every texel of a UV atlas from the field or from decoded views, and write the files.

A 64^3-grid mesh has a few thousand vertices; vertex colours blur everything finer than a
triangle. A texture carries the colour at the resolution of the renders instead:

- **pixel priors** (:func:`bake_from_field`): each texel takes the field's colour at its
  surface point, half a voxel inside the surface (as vertex colours do);
- **latent priors** (:func:`bake_from_views`): ``--views`` renders are decoded and
  projected onto the texels, each texel averaging the views that see it, weighted by the
  squared cosine between its normal and the direction to the camera, with visibility from
  the rendered depth (:func:`sjc_core.mesh.colors.project_views`). Texels no view sees
  take the colour of the nearest seen texel on the surface.

Either way the texels outside the charts are then filled (:func:`sjc_core.mesh.uv_bake.fill_texture`),
so no lookup near a seam reads black. :func:`write_textured` writes OBJ + MTL + PNG and a
GLB with the PNG embedded, through trimesh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sjc_core.mesh.colors import ViewRenderer, field_colors, fill_from_nearest, project_views, to_uint8
from sjc_core.mesh.uv_bake import UVMesh, fill_texture, texel_surface

ProgressFn = Callable[[str, int, int], None]
TEXTURE_FORMATS: tuple[str, ...] = ("obj", "glb")


@dataclass
class BakedTexture:
    """A UV mesh and its texture (uint8 [size, size, 3], row 0 at the top), with coverage counts."""

    mesh: UVMesh
    texture: np.ndarray
    covered: int  # texels whose centre lies on the surface
    seen: int  # covered texels that got a colour of their own (all of them for field colours)

    @property
    def filled_from_neighbours(self) -> int:
        return self.covered - self.seen


def _finish(mesh: UVMesh, surface: Any, colours: np.ndarray) -> np.ndarray:
    """Place the covered texels' colours and fill the rest of the square."""
    size = mesh.size
    texture = np.zeros((size, size, 3))
    texture[surface.rows, surface.cols] = colours
    return to_uint8(fill_texture(texture, surface.mask))


def bake_from_field(field: Any, mesh: UVMesh, value_range: tuple[float, float], inset: float,
                    progress: ProgressFn | None = None) -> BakedTexture:
    """Each texel: the field's features ``inset`` inside its surface point, mapped from ``value_range``."""
    surface = texel_surface(mesh)
    colours = field_colors(field, surface.points, surface.normals, value_range, inset, progress=progress,
                           phase="texture")
    count = len(surface.rows)
    return BakedTexture(mesh=mesh, texture=_finish(mesh, surface, colours), covered=count, seen=count)


def bake_from_views(mesh: UVMesh, render: ViewRenderer, poses: list[np.ndarray], K: np.ndarray, size: int,
                    tolerance: float, progress: ProgressFn | None = None) -> BakedTexture:
    """Each texel: decoded views projected onto it (see the module docstring); ``size``: the depth maps' side."""
    surface = texel_surface(mesh)
    colours, seen = project_views(surface.points, surface.normals, render, poses, K, size, tolerance,
                                  progress=progress, phase="texture")
    colours = fill_from_nearest(surface.points, colours, seen)
    return BakedTexture(mesh=mesh, texture=_finish(mesh, surface, colours), covered=len(seen), seen=int(seen.sum()))


def textured_trimesh(baked: BakedTexture, name: str = "texture", pbr: bool = True) -> Any:
    """A trimesh with the UVs and the texture image attached (PBR material for glTF, plain for OBJ)."""
    import trimesh
    from PIL import Image

    image = Image.fromarray(baked.texture)
    if pbr:  # matte and non-metallic: viewers show the baked colour as it is
        material: Any = trimesh.visual.material.PBRMaterial(
            name=name, baseColorTexture=image, baseColorFactor=[255, 255, 255, 255],
            metallicFactor=0.0, roughnessFactor=1.0,
        )
    else:  # Kd 1: OBJ viewers multiply the texture by the diffuse colour
        material = trimesh.visual.material.SimpleMaterial(
            name=name, image=image, diffuse=[255, 255, 255, 255], ambient=[255, 255, 255, 255],
            specular=[0, 0, 0, 255], glossiness=1.0,
        )
    mesh = baked.mesh
    return trimesh.Trimesh(
        vertices=mesh.vertices, faces=mesh.faces, vertex_normals=mesh.normals,
        visual=trimesh.visual.TextureVisuals(uv=mesh.uv, material=material), process=False,
    )


def write_textured(baked: BakedTexture, path: Path, fmt: str) -> list[Path]:
    """Write ``path`` as OBJ (plus ``STEM.mtl`` and ``STEM.png`` beside it) or GLB (texture inside).

    Each file is written atomically; returns the paths written.
    """
    from trimesh.exchange.obj import export_obj

    from sjc_core.files.atomic import atomic_path

    written: list[Path] = []

    def put(target: Path, data: bytes | str) -> None:
        with atomic_path(target) as tmp:
            if isinstance(data, str):
                tmp.write_text(data, encoding="utf-8")
            else:
                tmp.write_bytes(data)
        written.append(target)

    stem = path.stem
    if fmt == "obj":
        mesh = textured_trimesh(baked, name=stem, pbr=False)
        text, files = export_obj(mesh, include_normals=True, include_texture=True, return_texture=True,
                                 mtl_name=f"{stem}.mtl")
        # the texture first, then the material, then the OBJ that names them
        for name in sorted(files, key=lambda n: n.endswith(".mtl")):
            put(path.with_name(name), files[name])
        put(path, text)
    elif fmt == "glb":
        put(path, textured_trimesh(baked, name=stem).export(file_type="glb"))
    else:
        raise ValueError(f"textured meshes are written as {' or '.join(TEXTURE_FORMATS)}, not {fmt}")
    return written
