"""Mesh clean-up before colouring and texturing: smoothing and decimation, with before/after counts.

Marching cubes on a voxel grid leaves a staircase a fraction of a voxel high and far more
triangles than the shape needs. Both are fixed here, in this order:

- **smoothing**: Taubin's lambda/mu filter (``trimesh.smoothing.filter_taubin``). Plain
  Laplacian smoothing shrinks a closed surface a little every pass; Taubin alternates a
  shrinking and an inflating step, so the volume stays while the staircase goes (a ball
  cut from a 40^3 grid: 10 passes halve the spread of its radius and lose 0.7 % of its
  volume; tests/test_texture_export.py).
- **decimation**: quadric edge collapse to a target face count with ``fast-simplification``
  (MIT, numpy only, a one-megabyte wheel; the library trimesh's own
  ``simplify_quadric_decimation`` wraps, called directly here because that wrapper's
  arguments changed across trimesh versions). PyMeshLab's quadric collapse is as good but
  a large GPL wheel with Qt; Open3D's is a several-hundred-megabyte dependency for one
  function. Like every plain edge-collapse decimator it does not guard topology: it can
  fold a sliver into two faces on the same three vertices (both are dropped here: they
  enclose nothing) and, pushed far, pinch thin parts (a stick, an arm) so that a few
  edges join four faces. The export then reports the mesh as open (the demo snowman at
  1500 faces: 9 such edges of 2211).

Normals are recomputed from the faces afterwards (area-weighted, outward for the
counter-clockwise faces marching cubes gives).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sjc_core.errors import SjcError

ProgressFn = Callable[[str, int, int], None]
MIN_FACES = 16
MAX_SMOOTH = 1000


@dataclass(frozen=True)
class CleanupReport:
    """Counts before and after, and what was done."""

    vertices_before: int
    faces_before: int
    vertices_after: int
    faces_after: int
    smooth: int
    target_faces: int | None

    def summary(self) -> str:
        """``clean-up (smooth 10, decimate to 5000): 9740 -> 5000 faces, 4872 -> 2502 vertices``."""
        done = [f"smooth {self.smooth}"] if self.smooth else []
        if self.target_faces is not None:
            fewer = self.faces_before <= self.target_faces
            done.append(f"{'no decimation, already at most' if fewer else 'decimate to'} {self.target_faces}")
        return (
            f"clean-up ({', '.join(done)}): {self.faces_before} -> {self.faces_after} faces, "
            f"{self.vertices_before} -> {self.vertices_after} vertices"
        )


def check_cleanup_options(target_faces: int | None, smooth: int) -> None:
    """One-line errors for bad ``--faces`` / ``--smooth`` values, and a missing decimation package."""
    if target_faces is not None and target_faces < MIN_FACES:
        raise SjcError(f"--faces: {target_faces} is too few; give at least {MIN_FACES} faces")
    if not 0 <= smooth <= MAX_SMOOTH:
        raise SjcError(f"--smooth: {smooth} is not a number of passes between 0 and {MAX_SMOOTH}")
    if target_faces is not None and importlib.util.find_spec("fast_simplification") is None:
        raise SjcError("--faces needs fast-simplification: pip install 'sjc[mesh]'")


def clean_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    normals: np.ndarray,
    target_faces: int | None = None,
    smooth: int = 0,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, CleanupReport]:
    """Smooth ``smooth`` Taubin passes, then decimate to at most ``target_faces`` faces.

    Returns new vertices, faces, outward normals and the counts; with nothing to do the
    input comes back unchanged (marching cubes' gradient normals included).
    """
    import trimesh

    check_cleanup_options(target_faces, smooth)
    before = (len(vertices), len(faces))
    decimate = target_faces is not None and target_faces < len(faces)
    if smooth or decimate:
        if progress is not None:
            progress("clean-up", 0, 1)
        mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
        if smooth:
            trimesh.smoothing.filter_taubin(mesh, iterations=int(smooth))
        if decimate:
            from fast_simplification import simplify

            points, triangles = simplify(np.asarray(mesh.vertices, dtype=np.float64),
                                         np.asarray(mesh.faces, dtype=np.int32), target_count=int(target_faces))
            mesh = trimesh.Trimesh(vertices=points, faces=_drop_twin_faces(triangles), process=False)
            mesh.remove_unreferenced_vertices()
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        faces = np.asarray(mesh.faces, dtype=np.int64)
        normals = np.asarray(mesh.vertex_normals, dtype=np.float64)
        if progress is not None:
            progress("clean-up", 1, 1)
    if len(faces) == 0:
        raise SjcError("--faces: decimation left no surface; give more faces")
    report = CleanupReport(before[0], before[1], len(vertices), len(faces), int(smooth), target_faces)
    return vertices, faces, normals, report


def _drop_twin_faces(faces: np.ndarray) -> np.ndarray:
    """Faces without those whose three vertices another face also uses (collapsed slivers)."""
    key = np.sort(np.asarray(faces), axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    return np.asarray(faces)[counts[inverse.reshape(-1)] == 1]
