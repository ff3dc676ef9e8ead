"""Posed image sets in the NeRF-synthetic ("Blender") layout.

A data folder holds ``transforms.json`` or ``transforms_{train,val,test}.json``::

    {"camera_angle_x": 0.69,                      # horizontal field of view, radians
     "frames": [{"file_path": "./train/r_0",      # relative to the folder; extension optional
                 "transform_matrix": [[...4 numbers...] x 4]}]}   # camera-to-world, OpenGL

Poses are camera-to-world with the camera looking along its -z axis and +y up in the
picture (OpenGL, as Blender writes them). Our world is y-up; Blender scenes are z-up, so
``z_up=True`` turns the world (not the cameras) by -90 degrees about x.

The field lives in a box centred on the origin, so ``scale`` and ``center`` bring a scene
into it: ``center`` moves the point the cameras look at to the origin, ``scale`` multiplies
every camera position (``"auto"`` puts the mean camera distance at ``target_radius``).

Cameras inside the field's box are allowed: the renderer clamps the march at the eye, as
the reference does for its radius-1.5 cameras in a [-1, 1]^3 box. A camera that sees no
part of the box cannot teach the field anything; it costs a warning, not an error.

Every problem with the files is an :class:`~sjc_core.errors.SjcError` naming the file.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sjc_core.errors import SjcError
from sjc_core.pixels import read_pixels

Split = Literal["train", "val", "test"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# Blender's z-up world -> our y-up world: (x, y, z) -> (x, z, -y), a proper rotation.
Z_UP_TO_Y_UP = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


@dataclass(frozen=True)
class PosedImages:
    """Images with their cameras: what the loader returns.

    ``images`` float32 [N, H, W, 3] in [0, 1]; ``c2w`` float64 [N, 4, 4] (OpenGL, y-up
    world); ``fov_deg`` the horizontal field of view shared by all frames; ``names`` the
    image paths relative to the data folder; ``source`` the transforms file they came from.
    """

    images: np.ndarray
    c2w: np.ndarray
    fov_deg: float
    names: list[str]
    source: Path
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    def intrinsics(self) -> np.ndarray:
        """The 3x3 K of every frame (see :func:`sjc_core.cameras.intrinsics`)."""
        from sjc_core.cameras import intrinsics

        return intrinsics(self.fov_deg, self.height, self.width)

    def camera_directions(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit directions from the origin to each camera [N, 3] and their distances [N]."""
        return camera_directions(self.c2w)

    def subset(self, indices: Sequence[int]) -> "PosedImages":
        """The frames at ``indices`` (a hold-out split)."""
        idx = list(indices)
        return PosedImages(
            images=self.images[idx],
            c2w=self.c2w[idx],
            fov_deg=self.fov_deg,
            names=[self.names[i] for i in idx],
            source=self.source,
            offset=self.offset,
            scale=self.scale,
        )


def camera_directions(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each camera sits as seen from the origin: unit direction [N, 3], radius [N].

    Priors built from posed images use these to pick the images nearest a training camera
    and to train at the data's radius.
    """
    eyes = np.asarray(c2w, dtype=np.float64)[..., :3, 3]
    radii = np.linalg.norm(eyes, axis=-1)
    return eyes / np.maximum(radii, 1e-12)[..., None], radii


def transforms_path(folder: Path, split: Split = "train") -> Path | None:
    """The transforms file of a split: ``transforms_<split>.json``; for train, else ``transforms.json``."""
    specific = folder / f"transforms_{split}.json"
    if specific.is_file():
        return specific
    generic = folder / "transforms.json"
    if split == "train" and generic.is_file():
        return generic
    return None


def load_posed_images(
    folder: str | Path,
    split: Split = "train",
    *,
    resolution: int | None = None,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    z_up: bool = False,
    scale: float | Literal["auto"] = 1.0,
    center: bool | Sequence[float] = False,
    target_radius: float = 1.5,
    box_half: float | None = 1.0,
    warn: Callable[[str], None] | None = None,
) -> PosedImages:
    """Load one split of a NeRF-synthetic folder.

    ``resolution``: resize every image to this width (height keeps the aspect ratio; the
    horizontal field of view is unchanged), anti-aliased. ``background``: RGB in [0, 1]
    that RGBA images are composited on. ``z_up``: the data's world is z-up (Blender).
    ``scale``/``center``: see the module docstring; ``"auto"`` and ``center=True`` are
    computed from this split's own cameras: to load another split the same way, pass the
    first split's ``scale`` and ``offset`` (``center=train.offset, scale=train.scale``).
    ``box_half``: half size of the field's box, for the warning about cameras that cannot
    see it (None: no check).
    ``warn`` receives warning lines (default: stderr).
    """
    folder = Path(folder)
    if resolution is not None and resolution < 1:
        raise SjcError(f"resolution: must be a positive width in pixels, got {resolution}")
    if not folder.exists():
        raise SjcError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise SjcError(f"{folder}: not a folder (expected a folder with transforms.json)")
    path = transforms_path(folder, split)
    if path is None:
        wanted = "transforms_train.json or transforms.json" if split == "train" else f"transforms_{split}.json"
        raise SjcError(f"{folder}: no {wanted} in this folder")
    meta = read_transforms(path)
    fov_deg = math.degrees(meta["camera_angle_x"])
    frames = meta["frames"]
    poses = np.stack([pose for _, pose in frames])
    if z_up:
        poses = Z_UP_TO_Y_UP @ poses
    poses, offset, factor = normalize_poses(poses, scale=scale, center=center, target_radius=target_radius, where=path)

    images, names = _read_images(folder, path, [file_path for file_path, _ in frames], background)
    if resolution is not None:
        images = resize_images(images, resolution)
    data = PosedImages(
        images=images,
        c2w=poses,
        fov_deg=fov_deg,
        names=names,
        source=path,
        offset=tuple(float(v) for v in offset),  # type: ignore[arg-type]
        scale=factor,
    )
    if box_half is not None:
        message = blind_camera_warning(data, box_half)
        if message:
            (warn or _stderr)(message)
    return data


def blind_camera_warning(data: PosedImages, box_half: float) -> str | None:
    """A warning line naming the cameras that see nothing of the box, or None."""
    blind = cameras_missing_box(data.c2w, data.fov_deg, data.height, data.width, box_half)
    if not blind:
        return None
    listed = ", ".join(data.names[i] for i in blind[:5]) + (" ..." if len(blind) > 5 else "")
    return (
        f"{data.source}: {len(blind)} camera(s) see nothing of the [-{box_half:g}, {box_half:g}]^3 box "
        f"({listed}); try --scale/--center or --z-up"
    )


def read_transforms(path: Path) -> dict[str, Any]:
    """Parse and check a transforms file: ``camera_angle_x`` and frames of (file_path, 4x4 pose)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
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


def normalize_poses(
    c2w: np.ndarray,
    *,
    scale: float | Literal["auto"] = 1.0,
    center: bool | Sequence[float] = False,
    target_radius: float = 1.5,
    where: Path | str = "poses",
) -> tuple[np.ndarray, np.ndarray, float]:
    """Move and scale camera positions so the scene sits in the field's box.

    ``center``: True moves the point nearest to every camera's viewing axis (least
    squares) to the origin; a 3-vector is used as that point. ``scale``: a factor, or
    ``"auto"`` to put the mean camera distance (after centring) at ``target_radius``.
    Rotations are untouched: scaling a scene does not change what a pinhole camera sees.
    Returns the new poses, the point moved to the origin and the factor.
    """
    poses = np.array(c2w, dtype=np.float64, copy=True)
    point = np.zeros(3)
    if center is True:
        point = look_at_point(poses)
    elif center is not False:
        point = np.asarray(center, dtype=np.float64).reshape(3)
    poses[:, :3, 3] -= point
    if scale == "auto":
        mean_radius = float(np.linalg.norm(poses[:, :3, 3], axis=-1).mean())
        if mean_radius < 1e-9:
            raise SjcError(f"{where}: cameras sit at the origin; cannot pick a scale automatically")
        factor = target_radius / mean_radius
    else:
        factor = float(scale)
        if not factor > 0:
            raise SjcError(f"{where}: scale must be positive, got {scale!r}")
    poses[:, :3, 3] *= factor
    return poses, point, factor


def look_at_point(c2w: np.ndarray) -> np.ndarray:
    """The point nearest (least squares) to every camera's optical axis."""
    eyes = c2w[:, :3, 3]
    axes = -c2w[:, :3, 2]
    axes = axes / np.linalg.norm(axes, axis=-1, keepdims=True)
    projector = np.eye(3)[None] - axes[:, :, None] * axes[:, None, :]
    a = projector.sum(axis=0)
    b = (projector @ eyes[:, :, None]).sum(axis=0)[:, 0]
    if np.linalg.cond(a) > 1e8:  # all axes parallel: fall back to the cameras' mean
        return eyes.mean(axis=0)
    return np.linalg.solve(a, b)


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


def read_image(path: Path, background: Sequence[float]) -> np.ndarray:
    """One image as float32 [H, W, 3] in [0, 1]; alpha is composited on ``background``."""
    image = read_pixels(path)
    channels = image.shape[-1]
    if channels in (2, 4):  # grey+alpha or RGBA: composite on the background colour
        colour, alpha = image[..., :-1], image[..., -1:]
        if colour.shape[-1] == 1:
            colour = np.repeat(colour, 3, axis=-1)
        bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
        image = colour * alpha + bg * (1.0 - alpha)
    elif channels == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _read_images(
    folder: Path, transforms: Path, file_paths: list[str], background: Sequence[float]
) -> tuple[np.ndarray, list[str]]:
    images: list[np.ndarray] = []
    names: list[str] = []
    first: tuple[str, tuple[int, int]] | None = None
    for index, file_path in enumerate(file_paths):
        path = resolve_image_path(folder, file_path)
        if path is None:
            raise SjcError(
                f"{folder / file_path}: image not found (frames[{index}].file_path in {transforms.name})"
            )
        image = read_image(path, background)
        name = path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)
        size = (image.shape[0], image.shape[1])
        if first is None:
            first = (name, size)
        elif size != first[1]:
            raise SjcError(
                f"{path}: image is {size[1]}x{size[0]} (WxH) but {first[0]} is "
                f"{first[1][1]}x{first[1][0]}: all images of a split must share one size"
            )
        images.append(image)
        names.append(name)
    return np.stack(images), names


def resize_images(images: np.ndarray, width: int) -> np.ndarray:
    """Resize [N, H, W, 3] to ``width`` columns (height keeps the aspect), anti-aliased."""
    import torch
    import torch.nn.functional as F

    n, h, w, _ = images.shape
    height = max(1, round(h * width / w))
    if (height, width) == (h, w):
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    y = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return y.clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous().numpy()


def cameras_missing_box(
    c2w: np.ndarray, fov_deg: float, height: int, width: int, box_half: float, probes: int = 17
) -> list[int]:
    """Indices of cameras none of whose probe rays (a grid over the picture) meets the box."""
    from sjc_core.cameras import intrinsics

    k_inv = np.linalg.inv(intrinsics(fov_deg, height, width))
    cols = np.linspace(-0.5, width - 0.5, probes)
    rows = np.linspace(-0.5, height - 0.5, probes)
    grid = np.stack(np.meshgrid(cols, rows, indexing="xy"), axis=-1).reshape(-1, 2)
    pixels = np.concatenate([grid, np.ones((grid.shape[0], 1))], axis=1)
    cam_dirs = pixels @ k_inv.T  # camera-space directions (z = -1 in front)
    blind = []
    for index, pose in enumerate(c2w):
        origin = pose[:3, 3]
        if np.all(np.abs(origin) <= box_half):
            continue  # inside the box: every ray starts in it
        dirs = cam_dirs @ pose[:3, :3].T
        dirs = np.where(dirs == 0.0, 1e-12, dirs)
        t1 = (-box_half - origin) / dirs
        t2 = (box_half - origin) / dirs
        t_near = np.minimum(t1, t2).max(axis=-1)
        t_far = np.maximum(t1, t2).min(axis=-1)
        if not np.any((t_far >= np.maximum(t_near, 0.0))):
            blind.append(index)
    return blind


def write_transforms(path: Path, fov_deg: float, frames: Sequence[tuple[str, np.ndarray]]) -> Path:
    """Write a transforms file (NeRF-synthetic layout) atomically; ``frames``: (file_path, c2w)."""
    from sjc_core.artifacts import write_text

    data = {
        "camera_angle_x": math.radians(fov_deg),
        "frames": [
            {"file_path": file_path, "transform_matrix": np.asarray(pose, dtype=np.float64).round(10).tolist()}
            for file_path, pose in frames
        ],
    }
    return write_text(path, json.dumps(data, indent=1) + "\n")


def _stderr(message: str) -> None:
    print(f"sjc: warning: {message}", file=sys.stderr)
