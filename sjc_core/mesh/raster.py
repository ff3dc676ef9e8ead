"""A small triangle rasteriser in numpy: meshes seen by a camera, and triangles laid out in UV space.

No OpenGL is needed (CI machines and servers have none): triangles are expanded to the
pixel centres inside their bounding boxes, tested with edge functions, and the nearest
candidate of each pixel wins (a z-buffer done by sorting). It serves three callers:

- :func:`rasterize` in texture space (no depth) tells :mod:`sjc_core.mesh.uv_bake` which
  triangle and barycentric weights each texel centre has;
- :func:`render_mesh` draws a vertex-coloured or textured mesh from a camera of
  :mod:`sjc_core.render.cameras` (pixel centres at integer coordinates, the reference's ``K``),
  for the tests that compare meshes with the field's renders and for the README pictures;
- :func:`sample_texture` reads a texture through UVs the way viewers do (bilinear,
  ``v`` up, texel centres at half-integers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CANDIDATES_PER_CHUNK = 1 << 22  # (face, pixel) pairs tested at once: bounds memory to ~200 MB


@dataclass
class Raster:
    """What covers each pixel: ``face`` [H, W] (-1: nothing), ``bary`` [H, W, 3], ``depth`` [H, W] (inf: nothing)."""

    face: np.ndarray
    bary: np.ndarray
    depth: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.face >= 0


def rasterize(xy: np.ndarray, faces: np.ndarray, width: int, height: int, depth: np.ndarray | None = None) -> Raster:
    """Rasterise triangles given by vertex positions ``xy`` [V, 2] in pixels (centres at integers).

    ``depth`` [V] (positive, e.g. distance along the view axis): the nearest triangle wins and
    the barycentric weights are perspective-correct. Without it (texture space, where charts
    do not overlap) the lowest face index wins. Edges are inclusive, so neighbouring
    triangles leave no cracks.
    """
    xy = np.asarray(xy, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    z = np.zeros(len(xy)) if depth is None else np.asarray(depth, dtype=np.float64)
    out_face = np.full(height * width, -1, dtype=np.int64)
    out_bary = np.zeros((height * width, 3))
    out_depth = np.full(height * width, np.inf)
    if len(faces) == 0:
        return Raster(out_face.reshape(height, width), out_bary.reshape(height, width, 3), out_depth.reshape(height, width))
    tri = xy[faces]  # [F, 3, 2]
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    low = np.ceil(tri.min(axis=1) - 1e-9).astype(np.int64)
    high = np.floor(tri.max(axis=1) + 1e-9).astype(np.int64)
    low = np.maximum(low, 0)
    high = np.minimum(high, [width - 1, height - 1])
    spans = np.maximum(high - low + 1, 0)
    counts = spans[:, 0] * spans[:, 1]
    keep = (counts > 0) & (np.abs(area) > 1e-12)
    if depth is not None:
        keep &= (z[faces] > 0).all(axis=1)  # triangles crossing the camera plane are dropped
    order = np.nonzero(keep)[0]
    totals = np.cumsum(counts[order])
    start = 0
    while start < len(order):
        # faces whose candidates fit in one chunk (always at least one face)
        base = totals[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(totals, base + CANDIDATES_PER_CHUNK, side="right")))
        _raster_chunk(order[start:stop], faces, xy, z, area, low, spans, counts, width, depth is not None,
                      out_face, out_bary, out_depth)
        start = stop
    return Raster(out_face.reshape(height, width), out_bary.reshape(height, width, 3), out_depth.reshape(height, width))


def _raster_chunk(ids: np.ndarray, faces: np.ndarray, xy: np.ndarray, z: np.ndarray, area: np.ndarray,
                  low: np.ndarray, spans: np.ndarray, counts: np.ndarray, width: int, perspective: bool,
                  out_face: np.ndarray, out_bary: np.ndarray, out_depth: np.ndarray) -> None:
    """Test one chunk of faces' candidate pixels and merge the winners into the output buffers."""
    n = counts[ids]
    face = np.repeat(ids, n)
    first = np.repeat(np.cumsum(n) - n, n)
    local = np.arange(len(face)) - first
    span_x = spans[face, 0]
    px = low[face, 0] + local % span_x
    py = low[face, 1] + local // span_x
    corners = xy[faces[face]]  # [M, 3, 2]
    weights = np.empty((len(face), 3))
    for i in range(3):  # the weight of corner i is the edge function of the opposite edge
        u, v = corners[:, (i + 1) % 3], corners[:, (i + 2) % 3]
        weights[:, i] = (v[:, 0] - u[:, 0]) * (py - u[:, 1]) - (v[:, 1] - u[:, 1]) * (px - u[:, 0])
    weights /= area[face][:, None]
    inside = (weights >= -1e-9).all(axis=1)
    face, px, py, weights = face[inside], px[inside], py[inside], weights[inside]
    if perspective:  # interpolate 1/z linearly in screen space
        inv = weights / z[faces[face]]
        total = inv.sum(axis=1)
        depth = 1.0 / total
        weights = inv / total[:, None]
    else:
        depth = face.astype(np.float64)
    pixel = py * width + px
    order = np.lexsort((depth, pixel))
    pixel, depth, face, weights = pixel[order], depth[order], face[order], weights[order]
    first_of_pixel = np.ones(len(pixel), dtype=bool)
    first_of_pixel[1:] = pixel[1:] != pixel[:-1]
    pixel, depth, face, weights = pixel[first_of_pixel], depth[first_of_pixel], face[first_of_pixel], weights[first_of_pixel]
    nearer = depth < out_depth[pixel]
    pixel = pixel[nearer]
    out_face[pixel] = face[nearer]
    out_bary[pixel] = weights[nearer]
    out_depth[pixel] = depth[nearer]


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup at ``uv`` [N, 2] (OBJ/glTF convention: v = 0 is the bottom row).

    ``texture`` [H, W, C] (any dtype; returned as float64). Lookups clamp at the borders.
    """
    tex = np.asarray(texture, dtype=np.float64)
    height, width = tex.shape[:2]
    x = np.asarray(uv[:, 0], dtype=np.float64) * width - 0.5
    y = (1.0 - np.asarray(uv[:, 1], dtype=np.float64)) * height - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0i, y0i = x0.astype(np.int64), y0.astype(np.int64)
    xs = np.clip([x0i, x0i + 1], 0, width - 1)
    ys = np.clip([y0i, y0i + 1], 0, height - 1)
    top = tex[ys[0], xs[0]] * (1 - fx) + tex[ys[0], xs[1]] * fx
    bottom = tex[ys[1], xs[0]] * (1 - fx) + tex[ys[1], xs[1]] * fx
    return top * (1 - fy) + bottom * fy


@dataclass
class MeshPicture:
    """A rendered mesh: ``rgb`` [H, W, 3] in [0, 1], ``mask`` [H, W] (mesh covers), ``depth`` [H, W]."""

    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray


def render_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    size: int,
    *,
    colors: np.ndarray | None = None,
    uv: np.ndarray | None = None,
    texture: np.ndarray | None = None,
    background: float | np.ndarray = 1.0,
    light: np.ndarray | None = None,
    supersample: int = 1,
) -> MeshPicture:
    """Draw a mesh from camera ``c2w`` with intrinsics ``K`` (for ``size`` x ``size`` pixels).

    Colour from ``colors`` (per vertex, uint8 or [0, 1]) or from ``texture`` ([H, W, 3]) read
    through per-vertex ``uv``; unlit unless ``light`` (a world direction) is given, then
    scaled by ``0.45 + 0.55 * max(0, n . light)`` with face normals. ``supersample`` f draws
    f x f samples per pixel and averages them (smooth edges, for pictures; the tests compare
    with one ray per pixel and keep 1). ``depth`` is the distance along the view axis.
    """
    f = int(supersample)
    side = size * f
    # pixel c of the picture is the centre of f x f samples: c_big = f * c + (f - 1) / 2
    Kf = np.array([[f, 0.0, (f - 1) / 2], [0.0, f, (f - 1) / 2], [0.0, 0.0, 1.0]]) @ np.asarray(K, dtype=np.float64)
    vertices = np.asarray(vertices, dtype=np.float64)
    cam = np.c_[vertices, np.ones(len(vertices))] @ np.linalg.inv(c2w).T
    proj = cam[:, :3] @ Kf.T
    depth = proj[:, 2]
    xy = proj[:, :2] / np.where(np.abs(depth) > 1e-12, depth, 1e-12)[:, None]
    raster = rasterize(xy, faces, side, side, depth=depth)
    mask = raster.mask
    hit_face = np.asarray(faces)[raster.face[mask]]
    bary = raster.bary[mask]
    rgb = np.empty((side, side, 3))
    rgb[:] = background
    if texture is not None and uv is not None:
        tex = np.asarray(texture, dtype=np.float64)
        tex = tex / 255.0 if np.asarray(texture).dtype == np.uint8 else tex
        at = np.einsum("nk,nkj->nj", bary, np.asarray(uv, dtype=np.float64)[hit_face])
        colour = sample_texture(tex[..., :3], at)
    elif colors is not None:
        col = np.asarray(colors)
        col = col[:, :3] / 255.0 if col.dtype == np.uint8 else col[:, :3].astype(np.float64)
        colour = np.einsum("nk,nkj->nj", bary, col[hit_face])
    else:
        colour = np.full((len(bary), 3), 0.8)
    if light is not None:
        tri = vertices[hit_face]
        normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
        direction = np.asarray(light, dtype=np.float64) / np.linalg.norm(light)
        colour = colour * (0.45 + 0.55 * np.clip(normal @ direction, 0.0, 1.0))[:, None]
    rgb[mask] = np.clip(colour, 0.0, 1.0)
    depth_map = np.where(mask, raster.depth, np.inf)
    if f > 1:
        rgb = rgb.reshape(size, f, size, f, 3).mean(axis=(1, 3))
        cover = mask.reshape(size, f, size, f).mean(axis=(1, 3))
        depth_map = depth_map.reshape(size, f, size, f).min(axis=(1, 3))
        mask = cover >= 0.5
    return MeshPicture(rgb=rgb, mask=mask, depth=depth_map)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB of two pictures in [0, 1] ([H, W, 3]), over ``mask`` when given."""
    diff = (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2
    mse = float(diff[mask].mean()) if mask is not None else float(diff.mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)
