"""Surface meshes from a radiance field: marching cubes on its density (geometry only).

Geometry: the density is sampled on a regular lattice over the field's box (the voxel
field's own grid when it has one), padded with one layer of empty space so every surface
closes, and cut at a density ``threshold`` with scikit-image's marching cubes. By default
the threshold is read off the renders: the 10th percentile of the densities at the points
where camera rays from eight views around the object turn half opaque (SJC fields are
soft, so no fixed level suits every run); ``ln 2 / voxel`` when no ray ends opaque.

Long phases report through an optional ``progress(phase, done, total)`` callback (phases
``sampling``, ``probe``, ``marching cubes``); this module prints nothing.

The rest of the export lives beside it, one job a module: :mod:`sjc_core.mesh.colors`
(vertex colours from the field or from decoded views), :mod:`sjc_core.mesh.cleanup`
(smoothing, decimation), :mod:`sjc_core.mesh.uv_bake` and :mod:`sjc_core.mesh.texture` (UV atlas and
baked texture), :mod:`sjc_core.mesh.export` (``sjc export-mesh`` on a run folder).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sjc_core.errors import SjcError
from sjc_core.mesh.colors import field_device

COLOR_MODES: tuple[str, ...] = ("auto", "features", "views", "none")


MeshFormat = Literal["ply", "obj", "glb"]


FORMATS: tuple[str, ...] = ("ply", "obj", "glb")


ProgressFn = Callable[[str, int, int], None]


"""``progress(phase, done, total)``: ``done`` of ``total`` steps of ``phase`` are finished."""


def _report(progress: ProgressFn | None, phase: str, done: int, total: int) -> None:
    if progress is not None:
        progress(phase, done, total)


@dataclass
class DensityGrid:
    """Density on a lattice: ``values[i, j, k]`` is at ``origin + (i, j, k) * spacing`` (x, y, z)."""

    values: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    box: np.ndarray  # [2, 3]: the mesh is clipped to it


@dataclass
class MeshResult:
    vertices: np.ndarray  # [V, 3] float, world coordinates (y up)
    faces: np.ndarray  # [F, 3] int, counter-clockwise seen from outside
    normals: np.ndarray  # [V, 3] outward unit normals
    colors: np.ndarray | None  # [V, 3] uint8
    threshold: float
    density_range: tuple[float, float]


def field_box(field: Any) -> np.ndarray:
    """The field's aabb as float64 [2, 3] (min row, max row)."""
    return torch.as_tensor(field.aabb).detach().double().cpu().numpy().reshape(2, 3)


def native_voxel(field: Any, fallback: float) -> float:
    """The voxel length the renderer assumes: twice its step (the voxel field's voxel)."""
    step = getattr(field, "step_size", None)
    return 2.0 * float(step) if step else fallback


# Which of the half-opacity densities the automatic threshold takes. Fields of four runs
# (the demo and three suite objects, 1500 steps): the median covered 68-82 % of the pixels
# the field renders opaque; the 10th percentile 87-95 %, with at most 0.2 % of the mesh's
# pixels outside them (the 2nd percentile: 96-100 %, but up to 7.5 % outside: floaters).
SURFACE_QUANTILE = 0.1


def default_threshold(voxel: float) -> float:
    """Density at which a slab one voxel thick is half opaque: 1 - exp(-sigma * voxel) = 1/2."""
    return math.log(2.0) / voxel


@torch.no_grad()
def surface_threshold(
    field: Any,
    poses: list[np.ndarray],
    fov_deg: float = 60.0,
    size: int = 48,
    opaque: float = 0.9,
    progress: ProgressFn | None = None,
    quantile: float = SURFACE_QUANTILE,
) -> float | None:
    """The ``quantile`` of the densities where camera rays turn half opaque, over the rays
    that end opaque.

    SJC fields are soft: density often ramps up over several voxels and never reaches a
    fixed level such as ``ln 2 / voxel``. The point where a ray's transmittance falls to 1/2
    is where its render shows the surface, so cutting at the density found there puts the
    mesh where the pictures put the object. Parts of one object reach that point at
    different densities (a thinly spread white body, a dense hat), and a cut at the median
    drops the thinner half; a low quantile keeps them. None when no ray ends ``opaque``.
    """
    from sjc_core.render.cameras import intrinsics
    from sjc_core.render.rays import camera_rays
    from sjc_core.render.spans import box_intersect

    device = field_device(field)
    step = float(field.step_size)
    K = intrinsics(fov_deg, size, size)
    aabb = torch.as_tensor(field.aabb, dtype=torch.float32, device=device)
    found = []
    _report(progress, "probe", 0, len(poses))
    for index, c2w in enumerate(poses, 1):
        ro, rd = camera_rays(K, c2w, size, size)
        ro, rd = ro.to(device), rd.to(device)
        t_min, t_max = box_intersect(ro, rd, aabb)
        hit = t_max > t_min
        if not bool(hit.any()):
            _report(progress, "probe", index, len(poses))
            continue
        ro, rd, t_min, t_max = ro[hit], rd[hit], t_min[hit], t_max[hit]
        k = int(math.ceil(float((t_max - t_min).max()) / step)) + 1
        t = t_min[:, None] + step * torch.arange(k, device=device, dtype=torch.float32)[None, :]
        inside = t < t_max[:, None]
        points = ro[:, None, :] + rd[:, None, :] * t[..., None]
        sigma = field.density(points.reshape(-1, 3)).reshape(t.shape) * inside
        depth = torch.cumsum(sigma * step, dim=1)  # optical depth along each ray
        ends_opaque = depth[:, -1] > -math.log(1.0 - opaque)
        first = torch.argmax((depth >= math.log(2.0)).to(torch.int8), dim=1)
        found.append(sigma[torch.arange(len(first), device=device), first][ends_opaque])
        _report(progress, "probe", index, len(poses))
    values = torch.cat(found) if found else torch.zeros(0)
    return float(torch.quantile(values.float().cpu(), quantile)) if values.numel() else None


@torch.no_grad()
def density_grid(
    field: Any, resolution: int | None = None, chunk: int = 1 << 16, progress: ProgressFn | None = None
) -> DensityGrid:
    """Sample the field's density at voxel centres of a ``resolution``^3 lattice over its box.

    Without ``resolution`` a field with ``density_volume()`` gives its own grid (exact, no
    resampling); other fields are sampled at 128^3.
    """
    box = field_box(field)
    extent = box[1] - box[0]
    if resolution is None and callable(getattr(field, "density_volume", None)):
        _report(progress, "sampling", 0, 1)
        sigma, aabb = field.density_volume()
        values = sigma.detach().float().cpu().numpy()
        values = values.reshape(values.shape[-3:])  # [Z, Y, X]
        values = np.ascontiguousarray(values.transpose(2, 1, 0))  # -> [X, Y, Z]
        box = torch.as_tensor(aabb).detach().double().cpu().numpy().reshape(2, 3)
        spacing = (box[1] - box[0]) / np.array(values.shape, dtype=np.float64)
        _report(progress, "sampling", 1, 1)
        return DensityGrid(values=values, origin=box[0] + spacing / 2, spacing=spacing, box=box)
    n = int(resolution or 128)
    spacing = extent / n
    axes = [box[0, a] + (np.arange(n) + 0.5) * spacing[a] for a in range(3)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    device = field_device(field)
    out = np.empty(points.shape[0], dtype=np.float32)
    chunks = -(-points.shape[0] // chunk)
    _report(progress, "sampling", 0, chunks)
    for index, start in enumerate(range(0, points.shape[0], chunk), 1):
        batch = torch.as_tensor(points[start : start + chunk], dtype=torch.float32, device=device)
        out[start : start + batch.shape[0]] = field.density(batch).reshape(-1).float().cpu().numpy()
        _report(progress, "sampling", index, chunks)
    return DensityGrid(values=out.reshape(n, n, n), origin=box[0] + spacing / 2, spacing=spacing, box=box)


def marching_cubes(grid: DensityGrid, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices, faces and outward normals of the ``threshold`` level set (closed surfaces).

    Surfaces that reach the box's walls are closed by a layer of zero density outside it.
    """
    from skimage import measure

    high = float(grid.values.max())
    if not (0 < threshold < high):
        raise SjcError(
            f"threshold: {threshold:.4g} does not cut the density (max {high:.4g}); "
            "pass a --threshold between 0 and that"
        )
    # One empty layer around the box closes surfaces that touch its walls.
    padded = np.pad(grid.values.astype(np.float32), 1, mode="constant", constant_values=0.0)
    verts, faces, normals, _ = measure.marching_cubes(
        padded, level=threshold, spacing=tuple(float(s) for s in grid.spacing), gradient_direction="descent",
        allow_degenerate=False,
    )
    # the closing layer lies half a voxel outside the box: flatten it onto the walls
    verts = np.clip(verts + (grid.origin - grid.spacing)[None, :], grid.box[0], grid.box[1])
    # skimage orders each triangle clockwise seen from the descent side; flip to CCW-outward.
    faces = faces[:, ::-1].astype(np.int64)
    return verts.astype(np.float64), faces, normals.astype(np.float64)


def keep_largest(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The connected piece with the most faces (drops floaters); returns kept vertex indices too."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(vertices),) * 2)
    _, labels = connected_components(graph, directed=False)
    face_labels = labels[faces[:, 0]]
    biggest = np.bincount(face_labels).argmax()
    kept_faces = faces[face_labels == biggest]
    used = np.unique(kept_faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[kept_faces], used


def color_views(radius: float, count: int) -> list[np.ndarray]:
    """``count`` cameras around the object: two rings (15 and 50 degrees up) and one from above."""
    from sjc_core.render.cameras import look_at

    poses = []
    low = max(1, (2 * (count - 1)) // 3)
    high = max(0, count - 1 - low)
    for ring, elevation in ((low, 15.0), (high, 50.0)):
        for i in range(ring):
            azimuth = 2 * math.pi * (i + 0.5 * (elevation > 20)) / ring
            e = math.radians(elevation)
            eye = radius * np.array([math.cos(e) * math.sin(azimuth), math.sin(e), math.cos(e) * math.cos(azimuth)])
            poses.append(look_at(eye))
    if count > len(poses):
        poses.append(look_at(np.array([0.0, radius, 1e-3])))
    return poses[:count]


def extract_mesh(field: Any, threshold: float | None = None, resolution: int | None = None,
                 largest_only: bool = False, probe_radius: float = 1.5,
                 progress: ProgressFn | None = None) -> MeshResult:
    """Geometry only: sample, cut, orient (colours are added by the caller).

    Without ``threshold`` the level is :func:`surface_threshold` seen from eight cameras at
    ``probe_radius`` (falling back to ``ln 2 / voxel`` when no ray ends opaque).
    """
    grid = density_grid(field, resolution, progress=progress)
    if not np.isfinite(grid.values).all():
        raise SjcError("the field's density holds NaN or Inf values; no surface can be cut from it")
    level = threshold
    if level is None:
        level = surface_threshold(field, color_views(probe_radius, 8), progress=progress)
        voxel = default_threshold(native_voxel(field, float(grid.spacing.mean())))
        level = automatic_level(level, voxel, float(grid.values.max()))
    _report(progress, "marching cubes", 0, 1)
    vertices, faces, normals = marching_cubes(grid, float(level))
    _report(progress, "marching cubes", 1, 1)
    if largest_only and len(faces):
        vertices, faces, used = keep_largest(vertices, faces)
        normals = normals[used]
    if len(faces) == 0:
        raise SjcError(f"threshold: {level:.4g} leaves no surface; lower --threshold")
    return MeshResult(vertices, faces, normals, None, float(level),
                      (float(grid.values.min()), float(grid.values.max())))


def automatic_level(probed: float | None, voxel_level: float, high: float) -> float:
    """The automatic threshold: the probed level, else ``ln 2 / voxel``; either only when it
    cuts the density (a young field's maximum can lie below both), else half the maximum."""
    for level in (probed, voxel_level):
        if level is not None and 0 < level < high:
            return float(level)
    return high / 2 if high > 0 else float(probed if probed is not None else voxel_level)


def to_trimesh(result: MeshResult) -> Any:
    import trimesh

    colors = None
    if result.colors is not None:
        colors = np.concatenate([result.colors, np.full((len(result.colors), 1), 255, np.uint8)], axis=1)
    return trimesh.Trimesh(vertices=result.vertices, faces=result.faces, vertex_normals=result.normals,
                           vertex_colors=colors, process=False)


def write_mesh(result: MeshResult, path: Path, fmt: MeshFormat) -> Path:
    """Write PLY (binary), OBJ (with per-vertex colours) or GLB, atomically."""
    from sjc_core.files.atomic import atomic_path

    mesh = to_trimesh(result)
    if fmt == "obj":
        data: bytes | str = mesh.export(file_type="obj", include_color=result.colors is not None,
                                        include_normals=True)
    else:
        data = mesh.export(file_type=fmt)
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path
