"""The input picture of image-to-3D and the camera it was taken from (no torch).

Shared by the ``zero123`` prior (which conditions on the picture and on each view's pose
relative to its camera) and the ``reference-view`` loss (which ties the render at that
camera to the picture). Reading and checking the picture is cheap, so option preflights
call :func:`read_picture` too: a missing, unreadable or empty picture is one line.

Camera convention (the world is y-up, cameras look at the origin, OpenGL poses): a camera
at elevation ``e`` (degrees above the horizon), azimuth ``a`` and distance ``r`` sits at

    r * (-cos e cos a, sin e, cos e sin a)

which is :func:`sjc_core.render.cameras.eye_on_sphere`'s placement, so ``a`` is the recipe's
``[camera]`` azimuth: 0 is the sampler's ``front`` (the -x side), and ``a`` grows
counter-clockwise seen from above. Zero123's pose features are differences of these
angles: its data set measures the polar angle from the up axis and the azimuth
counter-clockwise seen from above (``atan2(y, x)`` in Blender's z-up world), which are
:func:`polar_azimuth_radius` here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sjc_core.errors import SjcError
from sjc_core.files.pixels import read_pixels
from sjc_core.render.cameras import look_at

# What the anchors use when a picture comes without its camera (DreamGaussian: elevation 0,
# radius 2, vertical FoV 49.1 degrees, the field of view of Zero123's Objaverse renders).
DEFAULT_ELEVATION = 0.0
DEFAULT_AZIMUTH = 0.0
DEFAULT_DISTANCE = 2.0
DEFAULT_FOV = 49.1
DEFAULT_TOLERANCE = 0.1  # max channel difference from the background colour that still counts as background
FOREGROUND_ALPHA = 0.5  # a pixel at least this opaque is foreground
MIN_SIDE = 8  # pixels: anything smaller cannot be a picture of an object

Background = Literal["auto"] | tuple[float, float, float]


@dataclass(frozen=True)
class ReferenceCamera:
    """Where the input picture was taken from: angles in degrees, distance in world units."""

    elevation_deg: float = DEFAULT_ELEVATION
    azimuth_deg: float = DEFAULT_AZIMUTH
    distance: float = DEFAULT_DISTANCE
    fov_deg: float = DEFAULT_FOV

    def eye(self) -> np.ndarray:
        return camera_eye(self.elevation_deg, self.azimuth_deg, self.distance)

    def c2w(self) -> np.ndarray:
        """The 4x4 camera-to-world pose (OpenGL, looking at the origin, y up)."""
        return look_at(self.eye())

    def polar_azimuth_radius(self) -> tuple[float, float, float]:
        """(polar, azimuth) in radians and the distance, as :func:`polar_azimuth_radius` gives for its eye."""
        return math.radians(90.0 - self.elevation_deg), math.radians(self.azimuth_deg), float(self.distance)


def camera_eye(elevation_deg: float, azimuth_deg: float, distance: float) -> np.ndarray:
    """The eye at elevation / azimuth (degrees) and distance, in the module's convention."""
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    return distance * np.array([-math.cos(e) * math.cos(a), math.sin(e), math.cos(e) * math.sin(a)])


def polar_azimuth_radius(eye: Sequence[float]) -> tuple[float, float, float]:
    """Polar angle from +y and azimuth (radians, counter-clockwise from above; 0 toward -x)
    of a camera position, and its distance from the origin."""
    x, y, z = (float(v) for v in eye)
    radius = math.sqrt(x * x + y * y + z * z)
    polar = math.acos(max(-1.0, min(1.0, y / radius))) if radius > 0 else 0.0
    return polar, math.atan2(z, -x), radius


@dataclass(frozen=True)
class Picture:
    """A square RGB picture in [0, 1] and its silhouette.

    ``rgb`` [S, S, 3] float32: composited on white when the file has an alpha channel (what
    Zero123 was trained on), as it is otherwise. ``mask`` [S, S] float32 in [0, 1]: the alpha
    channel, or 1 where a pixel differs from the background colour by more than the
    tolerance. Non-square files are padded to a square with background.
    """

    path: Path
    rgb: np.ndarray
    mask: np.ndarray
    has_alpha: bool
    background: tuple[float, float, float]

    @property
    def size(self) -> int:
        return int(self.rgb.shape[0])


def resolve_picture_path(image: str, base_dir: Path | str) -> Path:
    """A relative path is relative to the recipe's folder (``base_dir``)."""
    path = Path(image).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def read_picture(
    path: Path,
    where: str,
    background: Background = "auto",
    tolerance: float = DEFAULT_TOLERANCE,
) -> Picture:
    """Read and check the input picture; every problem is one line starting with ``where``.

    ``background`` is the colour of a picture without alpha behind the object (``auto``:
    the median colour of its outermost pixels); pixels within ``tolerance`` of it in every
    channel are background. A picture with no foreground pixel is an error.
    """
    raw = read_pixels(path, where)
    if raw.shape[0] < MIN_SIDE or raw.shape[1] < MIN_SIDE:
        raise SjcError(f"{where}: {path}: the picture is {raw.shape[1]}x{raw.shape[0]} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    has_alpha = raw.shape[-1] in (2, 4)
    colour = raw[..., :-1] if has_alpha else raw
    if colour.shape[-1] == 1:
        colour = np.repeat(colour, 3, axis=-1)
    if has_alpha:
        alpha = raw[..., -1]
        if float(alpha.max()) < FOREGROUND_ALPHA:
            raise SjcError(f"{where}: {path}: no foreground: the alpha channel is (nearly) transparent everywhere")
        rgb = colour * alpha[..., None] + (1.0 - alpha[..., None])  # on white, as Zero123's inputs
        mask, bg = alpha, (1.0, 1.0, 1.0)
    else:
        bg = border_colour(colour) if background == "auto" else tuple(float(c) for c in background)
        distance = np.abs(colour - np.asarray(bg, dtype=np.float32)).max(axis=-1)
        mask = (distance > tolerance).astype(np.float32)
        if not mask.any():
            shown = ", ".join(f"{c:.3g}" for c in bg)
            raise SjcError(
                f"{where}: {path}: no foreground: every pixel is within {tolerance:g} of the background colour "
                f"({shown}); give a picture with an alpha channel or set the background colour"
            )
        rgb = colour
    rgb, mask = _pad_square(rgb.astype(np.float32), mask.astype(np.float32), 1.0 if has_alpha else bg)
    return Picture(path=path, rgb=np.clip(rgb, 0.0, 1.0), mask=np.clip(mask, 0.0, 1.0), has_alpha=has_alpha, background=bg)


def border_colour(colour: np.ndarray) -> tuple[float, float, float]:
    """The median colour of the outermost ring of pixels (the background of an object picture)."""
    ring = np.concatenate([colour[0], colour[-1], colour[1:-1, 0], colour[1:-1, -1]])
    return tuple(float(v) for v in np.median(ring, axis=0))  # type: ignore[return-value]


def _pad_square(rgb: np.ndarray, mask: np.ndarray, fill: float | tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Centre the picture on a square of background (the field of view spans the longer side)."""
    height, width = mask.shape
    side = max(height, width)
    if height == width:
        return rgb, mask
    top, left = (side - height) // 2, (side - width) // 2
    square = np.empty((side, side, 3), dtype=np.float32)
    square[...] = np.asarray(fill, dtype=np.float32)
    square[top : top + height, left : left + width] = rgb
    silhouette = np.zeros((side, side), dtype=np.float32)
    silhouette[top : top + height, left : left + width] = mask
    return square, silhouette
