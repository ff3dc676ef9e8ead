"""Read one picture file into float pixels (regular files of at most 512 MiB only): the one reader behind posed image sets
(:func:`sjc_core.fit.datasets.read_image`) and image-to-3D's input picture.

Every problem is one line naming the file: missing, not a file, unreadable or foreign,
an unsupported pixel type or layout, or NaN/Inf in a float picture (which would otherwise
reach a prior's data unchecked).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from sjc_core.errors import SjcError
from sjc_core.inputs import MAX_PICTURE_BYTES, check_regular


def picture_shape(path: Path, where: str = "") -> tuple[int, int]:
    """(height, width) of a picture from its header where the format allows (else by reading it)."""
    import imageio.v3 as iio

    at = f"{where}: {path}" if where else str(path)
    check_regular(path, MAX_PICTURE_BYTES, "a picture", where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shape = iio.improps(path).shape
    except Exception:  # noqa: BLE001 (imageio raises many types): the full read names the problem
        shape = read_pixels(path, where).shape
    if len(shape) < 2:
        raise SjcError(f"{at}: expected a picture, got an array of shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def read_pixels(path: Path, where: str = "") -> np.ndarray:
    """float32 [H, W, C] in [0, 1] with C in 1..4 (grey, grey+alpha, RGB, RGBA), as stored.

    ``where`` (a recipe key such as ``prior.image``) starts every error line when given.
    """
    import imageio.v3 as iio

    at = f"{where}: {path}" if where else str(path)
    if not path.exists():
        raise SjcError(f"{at}: no such file")
    if not path.is_file() and not path.is_dir():  # a FIFO or a device: never opened (it could block)
        check_regular(path, MAX_PICTURE_BYTES, "a picture", where)
    if not path.is_file():
        raise SjcError(f"{at}: not a file")
    check_regular(path, MAX_PICTURE_BYTES, "a picture", where)
    try:
        with warnings.catch_warnings():  # a failed read tries legacy plugins that warn about themselves
            warnings.simplefilter("ignore")
            raw = np.asarray(iio.imread(path))
    except Exception as exc:  # noqa: BLE001 (imageio raises many types for corrupt or foreign files)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SjcError(f"{at}: cannot read the picture: {type(exc).__name__}" + (f": {detail}" if detail else "")) from None
    if raw.dtype == np.uint8:
        pixels = raw.astype(np.float32) / 255.0
    elif raw.dtype == np.uint16:
        pixels = raw.astype(np.float32) / 65535.0
    elif np.issubdtype(raw.dtype, np.floating):
        pixels = raw.astype(np.float32)
    else:
        raise SjcError(f"{at}: unsupported pixel type {raw.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4):
        raise SjcError(f"{at}: expected a grey, RGB or RGBA picture, got an array of shape {raw.shape}")
    if not np.isfinite(pixels).all():
        raise SjcError(f"{at}: the picture holds NaN or Inf values")
    return np.clip(pixels, 0.0, 1.0)
