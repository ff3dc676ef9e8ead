"""UV work for textured meshes: unwrap with xatlas, find each texel's surface point, fill empty texels.

- :func:`unwrap` cuts the mesh into charts and packs them into one square atlas of
  ``size`` texels with ``xatlas`` (the library Blender-free pipelines use). Vertices on a
  chart seam are duplicated, so the result has its own vertex list (``source`` maps each
  back to the input vertex). xatlas sizes an atlas by a texel density it estimates; the
  density is corrected once so the atlas fills the texture, and any remainder is scaled
  in (texels stay square).
- :func:`texel_surface` rasterises the charts in texture space: every texel whose centre
  a triangle covers gets a 3D point and an interpolated normal.
- :func:`fill_texture` gives every other texel a colour: a few rings of dilation copy
  the charts' edge colours outward (so bilinear lookups and mipmaps at chart borders never
  reach black), then pull-push (average down a pyramid, copy back up) fills the rest
  smoothly.

Texture layout: row 0 is the top of the picture; a texel at (row, col) has UV
``((col + 0.5) / size, 1 - (row + 0.5) / size)`` (OBJ and glTF both put v = 0 at the bottom).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sjc_core.errors import SjcError
from sjc_core.mesh.raster import rasterize

ProgressFn = Callable[[str, int, int], None]
MIN_TEXTURE = 64
MAX_TEXTURE = 8192
PADDING = 4  # texels between charts: room for bilinear lookups and a few mip levels


def check_texture_size(size: int) -> None:
    """``--texture N``: a power of two from 64 to 8192 (what GPUs and viewers handle everywhere)."""
    if size < MIN_TEXTURE or size > MAX_TEXTURE or size & (size - 1):
        raise SjcError(f"--texture: {size} is not a power of two from {MIN_TEXTURE} to {MAX_TEXTURE} (e.g. 1024)")


@dataclass
class UVMesh:
    """A mesh cut along chart seams: per-vertex ``uv`` in [0, 1] (v up), ``source`` indices into the input."""

    vertices: np.ndarray  # [V', 3]
    faces: np.ndarray  # [F, 3]
    normals: np.ndarray  # [V', 3]
    uv: np.ndarray  # [V', 2]
    source: np.ndarray  # [V'] int
    size: int  # texture side in texels
    charts: int


def unwrap(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, size: int,
           progress: ProgressFn | None = None) -> UVMesh:
    """Charts and a packed square atlas of ``size`` texels (see the module docstring)."""
    import xatlas

    check_texture_size(size)
    if progress is not None:
        progress("unwrap", 0, 2)
    positions = np.ascontiguousarray(vertices, dtype=np.float32)
    indices = np.ascontiguousarray(faces, dtype=np.uint32)
    unit_normals = np.ascontiguousarray(normals, dtype=np.float32)

    def generate(texels_per_unit: float) -> xatlas.Atlas:
        atlas = xatlas.Atlas()
        atlas.add_mesh(positions, indices, unit_normals)
        pack = xatlas.PackOptions()
        pack.padding = PADDING
        pack.bilinear = True
        pack.texels_per_unit = float(texels_per_unit)
        pack.resolution = 0  # one atlas, as large as the density makes it
        atlas.generate(xatlas.ChartOptions(), pack)
        return atlas

    # first guess: the surface at ~65 % packing efficiency fills the square
    area = _surface_area(vertices, faces)
    density = size * math.sqrt(0.65 / max(area, 1e-12))
    atlas = generate(density)
    if progress is not None:
        progress("unwrap", 1, 2)
    for _ in range(2):  # correct the density (at most twice) until the atlas nearly fills the texture
        side = max(atlas.width, atlas.height)
        if 0.85 * size <= side <= size:
            break
        density *= 0.97 * size / side
        atlas = generate(density)
    if atlas.atlas_count != 1:
        raise SjcError(f"--texture: xatlas made {atlas.atlas_count} atlases of this mesh, expected one")
    vmapping, new_faces, uv = atlas[0]
    width, height = atlas.width, atlas.height
    scale = size / max(size, width, height)  # an atlas a little larger than the texture is scaled in
    x = uv[:, 0].astype(np.float64) * width * scale  # texture pixels, row 0 at the top
    y = uv[:, 1].astype(np.float64) * height * scale
    if progress is not None:
        progress("unwrap", 2, 2)
    source = vmapping.astype(np.int64)
    return UVMesh(
        vertices=np.asarray(vertices, dtype=np.float64)[source],
        faces=new_faces.astype(np.int64),
        normals=np.asarray(normals, dtype=np.float64)[source],
        uv=np.stack([x / size, 1.0 - y / size], axis=1),
        source=source,
        size=int(size),
        charts=int(atlas.chart_count),
    )


def _surface_area(vertices: np.ndarray, faces: np.ndarray) -> float:
    tri = np.asarray(vertices, dtype=np.float64)[faces]
    return float(0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum())


@dataclass
class TexelSurface:
    """The texels a chart covers: ``rows``, ``cols``, their surface ``points`` and unit ``normals``."""

    rows: np.ndarray
    cols: np.ndarray
    points: np.ndarray  # [T, 3]
    normals: np.ndarray  # [T, 3]
    mask: np.ndarray  # [size, size] bool


def texel_surface(mesh: UVMesh) -> TexelSurface:
    """Where each covered texel centre lies on the surface (barycentric interpolation in its triangle)."""
    size = mesh.size
    xy = np.stack([mesh.uv[:, 0] * size - 0.5, (1.0 - mesh.uv[:, 1]) * size - 0.5], axis=1)
    raster = rasterize(xy, mesh.faces, size, size)
    rows, cols = np.nonzero(raster.mask)
    face = mesh.faces[raster.face[rows, cols]]
    bary = raster.bary[rows, cols]
    points = np.einsum("nk,nkj->nj", bary, mesh.vertices[face])
    normals = np.einsum("nk,nkj->nj", bary, mesh.normals[face])
    length = np.linalg.norm(normals, axis=1)
    flat = length < 1e-9  # opposite normals cancelled: use the triangle's own
    if flat.any():
        tri = mesh.vertices[face[flat]]
        normals[flat] = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        length[flat] = np.linalg.norm(normals[flat], axis=1)
    normals /= np.maximum(length, 1e-12)[:, None]
    return TexelSurface(rows=rows, cols=cols, points=points, normals=normals, mask=raster.mask)


def _dilate_once(texture: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unknown texels next to known ones (8-neighbourhood) take their neighbours' mean."""
    padded = np.pad(texture * known[..., None], ((1, 1), (1, 1), (0, 0)))
    weights = np.pad(known.astype(np.float64), 1)
    height, width = known.shape
    total = np.zeros_like(texture)
    count = np.zeros(known.shape)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == 1 and dx == 1:
                continue
            total += padded[dy : dy + height, dx : dx + width]
            count += weights[dy : dy + height, dx : dx + width]
    grow = ~known & (count > 0)
    texture = texture.copy()
    texture[grow] = total[grow] / count[grow, None]
    return texture, known | grow


def _pull_push(texture: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill every unknown texel from a pyramid of known-texel averages (coarser where gaps are wider)."""
    height, width = known.shape
    if height <= 1 and width <= 1:
        return np.where(known[..., None], texture, 0.5)
    weight = known.astype(np.float64)
    colour = texture * weight[..., None]
    ph, pw = height + height % 2, width + width % 2
    colour = np.pad(colour, ((0, ph - height), (0, pw - width), (0, 0)))
    weight = np.pad(weight, ((0, ph - height), (0, pw - width)))
    coarse_weight = weight.reshape(ph // 2, 2, pw // 2, 2).sum(axis=(1, 3))
    coarse_colour = colour.reshape(ph // 2, 2, pw // 2, 2, -1).sum(axis=(1, 3))
    coarse_known = coarse_weight > 0
    coarse = coarse_colour / np.maximum(coarse_weight, 1e-12)[..., None]
    coarse = _pull_push(coarse, coarse_known)
    up = coarse.repeat(2, axis=0).repeat(2, axis=1)[:height, :width]
    return np.where(known[..., None], texture, up)


def fill_texture(texture: np.ndarray, known: np.ndarray, rings: int = PADDING) -> np.ndarray:
    """Every texel coloured: ``rings`` of dilation around the known texels, then pull-push.

    ``texture`` [H, W, C] float (values at unknown texels are ignored), ``known`` [H, W] bool.
    With no known texel at all the texture is 0.5 grey.
    """
    texture = np.where(known[..., None], texture, 0.0).astype(np.float64)
    if not known.any():
        return np.full_like(texture, 0.5)
    for _ in range(rings):
        texture, known = _dilate_once(texture, known)
    return _pull_push(texture, known)
