"""Transforms files of posed image sets in the NeRF-synthetic ("Blender") layout::

    {"camera_angle_x": 0.69,                      # horizontal field of view, radians
     "frames": [{"file_path": "./train/r_0",      # relative to the folder; extension optional
                 "transform_matrix": [[...4 numbers...] x 4]}]}   # camera-to-world, OpenGL

Every problem with a file is an :class:`~sjc_core.errors.SjcError` naming the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sjc_core.errors import SjcError
from sjc_core.inputs import MAX_TRANSFORMS_BYTES, read_regular

Split = Literal["train", "val", "test"]


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def transforms_path(folder: Path, split: Split = "train") -> Path | None:
    """The transforms file of a split: ``transforms_<split>.json``; for train, else ``transforms.json``."""
    specific = folder / f"transforms_{split}.json"
    if specific.is_file():
        return specific
    generic = folder / "transforms.json"
    if split == "train" and generic.is_file():
        return generic
    return None


def read_transforms(path: Path) -> dict[str, Any]:
    """Parse and check a transforms file: ``camera_angle_x`` and frames of (file_path, 4x4 pose)."""
    data = read_regular(path, MAX_TRANSFORMS_BYTES, "a transforms file")  # no FIFO, device or huge file
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SjcError(f"{path}: cannot read: {exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SjcError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise SjcError(f"{path}: expected a JSON object with camera_angle_x and frames")
    if "camera_angle_x" not in raw:
        raise SjcError(f"{path}: missing key 'camera_angle_x' (horizontal field of view in radians)")
    angle = raw["camera_angle_x"]
    if isinstance(angle, bool) or not isinstance(angle, (int, float)) or not 0 < float(angle) < math.pi:
        raise SjcError(f"{path}: camera_angle_x must be a number of radians in (0, pi), got {angle!r}")
    if "frames" not in raw:
        raise SjcError(f"{path}: missing key 'frames'")
    frames_raw = raw["frames"]
    if not isinstance(frames_raw, list):
        raise SjcError(f"{path}: 'frames' must be a list, got {type(frames_raw).__name__}")
    if not frames_raw:
        raise SjcError(f"{path}: no frames")
    frames = []
    for index, frame in enumerate(frames_raw):
        where = f"{path}: frames[{index}]"
        if not isinstance(frame, dict):
            raise SjcError(f"{where}: expected an object with file_path and transform_matrix")
        for key in ("file_path", "transform_matrix"):
            if key not in frame:
                raise SjcError(f"{where}: missing key '{key}'")
        file_path = frame["file_path"]
        if not isinstance(file_path, str) or not file_path.strip():
            raise SjcError(f"{where}.file_path: expected a non-empty string, got {file_path!r}")
        frames.append((file_path, _pose(frame["transform_matrix"], f"{where}.transform_matrix")))
    return {"camera_angle_x": float(angle), "frames": frames}


def _pose(value: Any, where: str) -> np.ndarray:
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise SjcError(f"{where}: expected a 4x4 matrix of numbers") from None
    if matrix.shape != (4, 4):
        raise SjcError(f"{where}: expected a 4x4 matrix, got shape {'x'.join(map(str, matrix.shape)) or 'scalar'}")
    if not np.all(np.isfinite(matrix)):
        raise SjcError(f"{where}: matrix holds NaN or infinite values")
    if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise SjcError(f"{where}: last row must be [0, 0, 0, 1], got {matrix[3].tolist()}")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-9:
        raise SjcError(f"{where}: rotation part is singular")
    return matrix


def resolve_image_path(folder: Path, file_path: str) -> Path | None:
    """``file_path`` relative to the folder; without an extension, try the usual ones."""
    candidate = folder / file_path
    if candidate.suffix.lower() in IMAGE_EXTENSIONS:
        return candidate if candidate.is_file() else None
    if candidate.is_file():
        return candidate
    for ext in IMAGE_EXTENSIONS:
        with_ext = candidate.with_name(candidate.name + ext)
        if with_ext.is_file():
            return with_ext
    return None


def write_transforms(path: Path, fov_deg: float, frames: Sequence[tuple[str, np.ndarray]]) -> Path:
    """Write a transforms file (NeRF-synthetic layout) atomically; ``frames``: (file_path, c2w)."""
    from sjc_core.files.atomic import write_text

    data = {
        "camera_angle_x": math.radians(fov_deg),
        "frames": [
            {"file_path": file_path, "transform_matrix": np.asarray(pose, dtype=np.float64).round(10).tolist()}
            for file_path, pose in frames
        ],
    }
    return write_text(path, json.dumps(data, indent=1) + "\n")
