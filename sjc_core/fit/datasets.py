"""Posed image sets in the NeRF-synthetic ("Blender") layout: pictures with their cameras.

A data folder holds ``transforms.json`` or ``transforms_{train,val,test}.json`` (read by
:mod:`sjc_core.fit.transforms`); the poses are brought into the field's box by
:mod:`sjc_core.fit.poses`. The field lives in a box centred on the origin, so ``scale`` and
``center`` bring a scene into it: ``center`` moves the point the cameras look at to the
origin, ``scale`` multiplies every camera position (``"auto"`` puts the mean camera distance
at ``target_radius``).

Every problem with the files is an :class:`~sjc_core.errors.SjcError` naming the file.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sjc_core.errors import SjcError
from sjc_core.files.pixels import picture_shape, read_pixels
from sjc_core.inputs import size_text
from sjc_core.fit.poses import Z_UP_TO_Y_UP, camera_directions, cameras_missing_box, normalize_poses
from sjc_core.fit.transforms import Split, read_transforms, resolve_image_path, transforms_path


@dataclass(frozen=True)
class PosedImages:
    """Images with their cameras: what the loader returns.

    ``images`` float32 [N, H, W, 3] in [0, 1]; ``c2w`` float64 [N, 4, 4] (OpenGL, y-up
    world); ``fov_deg`` the horizontal field of view shared by all frames; ``names`` the
    image paths relative to the data folder; ``source`` the transforms file they came from;
    ``alphas`` float32 [N, H, W] in [0, 1] when the pictures carry alpha (``images`` are then
    composited on the background), else None.
    """

    images: np.ndarray
    c2w: np.ndarray
    fov_deg: float
    names: list[str]
    source: Path
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0
    alphas: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    def intrinsics(self) -> np.ndarray:
        """The 3x3 K of every frame (see :func:`sjc_core.render.cameras.intrinsics`)."""
        from sjc_core.render.cameras import intrinsics

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
            alphas=None if self.alphas is None else self.alphas[idx],
            source=self.source,
            offset=self.offset,
            scale=self.scale,
        )


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
    check_dataset_memory(folder, path, [file_path for file_path, _ in frames])
    poses = np.stack([pose for _, pose in frames])
    if z_up:
        poses = Z_UP_TO_Y_UP @ poses
    poses, offset, factor = normalize_poses(poses, scale=scale, center=center, target_radius=target_radius, where=path)

    images, names, alphas = _read_images(folder, path, [file_path for file_path, _ in frames], background)
    if resolution is not None:
        images = resize_images(images, resolution)
        if alphas is not None:
            alphas = resize_images(alphas[..., None], resolution)[..., 0]
    data = PosedImages(
        images=images,
        alphas=alphas,
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


# Pictures of a posed set held in memory at once (float32 RGB, at their stored size, before
# any resize): frames x height x width x 3 x 4 bytes may not pass this, nor half the RAM.
MAX_DATASET_BYTES = 4 << 30


def dataset_limit() -> int:
    """:data:`MAX_DATASET_BYTES`, or half this machine's memory when that is less."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return MAX_DATASET_BYTES
    return min(MAX_DATASET_BYTES, memory // 2) if memory > 0 else MAX_DATASET_BYTES


def check_dataset_memory(folder: Path, transforms: Path, file_paths: list[str], where: str = "") -> None:
    """Refuse a set whose pictures would not fit in memory, before any is loaded (one line).

    The size is that of the first picture (all pictures of a split share one, which loading
    checks), read from its header; ``where`` (a recipe key) starts the line.
    """
    first = resolve_image_path(folder, file_paths[0])
    if first is None:
        return  # loading names the missing picture
    height, width = picture_shape(first, where)
    need = len(file_paths) * height * width * 3 * 4
    limit = dataset_limit()
    if need > limit:
        prefix = f"{where}: " if where else ""
        raise SjcError(
            f"{prefix}{transforms}: {len(file_paths):,} frames of {width}x{height} pixels x 3 channels need "
            f"{size_text(need)} of memory as float32; at most {size_text(limit)} may be loaded (fewer frames or "
            "smaller pictures)"
        )


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


def read_image(path: Path, background: Sequence[float]) -> np.ndarray:
    """One image as float32 [H, W, 3] in [0, 1]; alpha is composited on ``background``."""
    return composite(read_pixels(path), background)[0]


def composite(image: np.ndarray, background: Sequence[float]) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB float32 [H, W, 3] in [0, 1] with any alpha composited on ``background``, the
    alpha [H, W] or None for a picture without one)."""
    channels = image.shape[-1]
    alpha = None
    if channels in (2, 4):  # grey+alpha or RGBA: composite on the background colour
        colour, alpha = image[..., :-1], np.clip(image[..., -1], 0.0, 1.0).astype(np.float32)
        if colour.shape[-1] == 1:
            colour = np.repeat(colour, 3, axis=-1)
        bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
        image = colour * alpha[..., None] + bg * (1.0 - alpha[..., None])
    elif channels == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.clip(image, 0.0, 1.0).astype(np.float32), alpha


def _read_images(
    folder: Path, transforms: Path, file_paths: list[str], background: Sequence[float]
) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """(pictures [N, H, W, 3], their names, their alphas [N, H, W] or None when none has one;
    a picture without alpha in a set with alphas counts as opaque)."""
    images: list[np.ndarray] = []
    alphas: list[np.ndarray | None] = []
    names: list[str] = []
    first: tuple[str, tuple[int, int]] | None = None
    for index, file_path in enumerate(file_paths):
        path = resolve_image_path(folder, file_path)
        if path is None:
            raise SjcError(
                f"{folder / file_path}: image not found (frames[{index}].file_path in {transforms.name})"
            )
        image, alpha = composite(read_pixels(path), background)
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
        alphas.append(alpha)
        names.append(name)
    if all(alpha is None for alpha in alphas):
        return np.stack(images), names, None
    opaque = np.ones(images[0].shape[:2], dtype=np.float32)
    return np.stack(images), names, np.stack([opaque if a is None else a for a in alphas])


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


def _stderr(message: str) -> None:
    print(f"sjc: warning: {message}", file=sys.stderr)
