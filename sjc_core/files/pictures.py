"""Pictures and videos a command writes: tensors to uint8, depth to colour, panels side by
side, PNG files and MP4 videos (a GIF when no ffmpeg is present), each written atomically.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from sjc_core.files.atomic import DISK_ERRNOS, WriteError, atomic_path


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[3|1, H, W] or [H, W, 3] or [H, W] values in [0, 1] -> uint8 [H, W, 3]."""
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def depth_to_rgb(depth: torch.Tensor | np.ndarray, near: float | None = None, far: float | None = None) -> np.ndarray:
    """A depth map as a grey picture: near is bright, far (and background) dark."""
    d = depth.detach().float().cpu().numpy() if isinstance(depth, torch.Tensor) else np.asarray(depth, dtype=np.float32)
    near = float(np.nanmin(d)) if near is None else near
    far = float(np.nanmax(d)) if far is None else far
    scaled = 1.0 - (d - near) / max(far - near, 1e-8)
    return to_uint8(np.clip(scaled, 0.0, 1.0))


LEGEND_HEIGHT = 16


def depth_legend(width: int, near: float, far: float, height: int = LEGEND_HEIGHT) -> np.ndarray:
    """A grey ramp from near (bright, left) to far (dark, right), labelled with both
    distances: the key under a depth panel, so its shades can be read as distances."""
    from PIL import Image, ImageDraw, ImageFont

    ramp = np.linspace(1.0, 0.0, max(width, 1), dtype=np.float32)[None, :].repeat(height, axis=0)
    canvas = Image.fromarray(to_uint8(ramp))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=max(8, height - 4))
    except TypeError:  # Pillow before 10.1: one bitmap size
        font = ImageFont.load_default()
    draw.text((2, 1), f"near {near:.2f}", fill=(0, 0, 0), font=font)
    label = f"far {far:.2f}"
    right = draw.textlength(label, font=font)
    draw.text((max(width - right - 2, width // 2), 1), label, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def with_legend(pane: np.ndarray, legend: np.ndarray) -> np.ndarray:
    """``pane`` with ``legend`` under its right-hand part (where the depth panel is)."""
    row = np.zeros((legend.shape[0], pane.shape[1], 3), dtype=np.uint8)
    row[:, pane.shape[1] - legend.shape[1]:] = legend[:, : pane.shape[1]]
    return np.concatenate([pane, row], axis=0)


def side_by_side(*images: np.ndarray) -> np.ndarray:
    """Concatenate uint8 pictures horizontally, resizing each to the first one's height."""
    height = images[0].shape[0]
    resized = [_resize_nearest(img, height) for img in images]
    return np.concatenate(resized, axis=1)


def _resize_nearest(image: np.ndarray, height: int) -> np.ndarray:
    if image.shape[0] == height:
        return image
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    rows = (np.arange(height) * image.shape[0] / height).astype(int)
    cols = (np.arange(width) * image.shape[1] / width).astype(int)
    return image[rows][:, cols]


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so 64x64 renders are visible in viewers."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


def write_image(path: Path, image: np.ndarray) -> Path:
    """Write a uint8 picture (PNG by extension), atomically."""
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=path.suffix)
    return path


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int = 20, warn: Callable[[str], None] | None = None) -> Path:
    """Write an mp4 through imageio-ffmpeg; when ffmpeg cannot run, fall back to a GIF.

    Returns the path actually written (``.gif`` in the fallback case).
    """
    import imageio.v2 as imageio

    frames = [_even(f) for f in frames]
    try:
        with atomic_path(path) as tmp:
            writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=1)
            try:
                for frame in frames:
                    writer.append_data(frame)
            finally:
                writer.close()
        return path
    except WriteError as exc:
        if exc.errno in DISK_ERRNOS:  # a full disk or a refusing folder: a GIF cannot help
            raise
        return _gif_instead(path, frames, fps, warn, exc)
    except Exception as exc:  # ffmpeg missing or broken: keep the run's result anyway
        return _gif_instead(path, frames, fps, warn, exc)


def _gif_instead(
    path: Path, frames: Sequence[np.ndarray], fps: int, warn: Callable[[str], None] | None, exc: Exception
) -> Path:
    import imageio.v2 as imageio

    gif = path.with_suffix(".gif")
    with atomic_path(gif) as tmp:
        imageio.mimsave(tmp, frames, format="GIF", duration=1.0 / fps, loop=0)
    (warn or _stderr)(f"could not write {path.name} with ffmpeg ({type(exc).__name__}); wrote {gif.name} instead")
    return gif


def _even(frame: np.ndarray) -> np.ndarray:
    """libx264 wants even sizes; pad by one pixel where needed."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if (h % 2 or w % 2) else frame


def read_video_frames(path: Path) -> list[np.ndarray]:
    """All frames of a video we wrote (for tests and galleries)."""
    import imageio.v3 as iio

    return list(iio.imiter(path))


def strip(frames: Iterable[np.ndarray], count: int) -> np.ndarray:
    """``count`` evenly spaced frames side by side (for READMEs and galleries)."""
    frames = list(frames)
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return np.concatenate([frames[i] for i in picks], axis=1)


def _stderr(message: str) -> None:
    print(f"sjc: warning: {message}", file=sys.stderr)
