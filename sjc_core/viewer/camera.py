"""viser's camera (OpenCV: +z forward, +y down, a wxyz quaternion) to sjc's OpenGL c2w and K.

sjc's cameras look along their -z axis with +y up (``render/cameras.py``); viser reports the
camera-to-world rotation of an OpenCV camera, so the y and z axes flip. viser's ``fov`` is
the vertical field of view in radians; sjc's intrinsics take the horizontal one in degrees.
"""

from __future__ import annotations

import math

import numpy as np

from sjc_core.render.cameras import intrinsics

OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0])
MAX_ASPECT = 4.0  # a page wider or taller than this is rendered at this aspect ratio


def quaternion_matrix(wxyz: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """The rotation matrix of a (w, x, y, z) quaternion (normalised first)."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(np.asarray(wxyz, dtype=np.float64))
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_quaternion(rotation: np.ndarray) -> np.ndarray:
    """The (w, x, y, z) quaternion of a rotation matrix, w >= 0."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + m[i, i] - m[j, j] - m[k, k], 1e-12))
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    quat = np.array(q) / np.linalg.norm(q)
    return quat if quat[0] >= 0 else -quat


def viser_to_c2w(wxyz: np.ndarray | tuple[float, ...], position: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """sjc's 4x4 OpenGL camera-to-world pose of a viser camera."""
    pose = np.eye(4)
    pose[:3, :3] = quaternion_matrix(wxyz) @ OPENCV_TO_OPENGL
    pose[:3, 3] = np.asarray(position, dtype=np.float64)
    return pose


def c2w_to_viser(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(wxyz, position) of the viser camera that sees what sjc's ``c2w`` sees."""
    pose = np.asarray(c2w, dtype=np.float64)
    return matrix_quaternion(pose[:3, :3] @ OPENCV_TO_OPENGL), pose[:3, 3].copy()


def page_intrinsics(fov_vertical: float, aspect: float, height: int) -> tuple[np.ndarray, int, int]:
    """(K, height, width) of a render ``height`` pixels tall for a page camera with viser's
    vertical field of view (radians) and aspect ratio (width / height)."""
    aspect = min(max(float(aspect), 1 / MAX_ASPECT), MAX_ASPECT) if math.isfinite(aspect) and aspect > 0 else 1.0
    width = max(1, round(height * aspect))
    horizontal = 2 * math.atan(math.tan(fov_vertical / 2) * width / height)
    return intrinsics(math.degrees(horizontal), height, width), height, width
