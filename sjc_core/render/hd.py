"""High-resolution final render (``sjc render RUN_DIR --hd``), after the reference's subpixel script.

Training renders 64x64 latents, which decode to jittery 512px videos. For a final video
each frame is instead rendered with ``f x f`` rays per pixel (f = 4: a 256x256 feature
image), downsampled with antialiasing to a size the decoder handles well (128x128
latents by default, which SD's VAE decodes to 1024x1024 pixels; pixel priors write the
128x128 picture as is), and decoded a few frames at a time. The spiral's first 30% look
straight down at the object and are skipped, as the reference skips 60 of its 200 poses;
``frames`` counts the frames that are kept.

Outputs in the output folder: ``frames/frame_NNNN.png`` (decoded pictures),
``hd_image.mp4`` (pictures only) and ``hd_image_depth.mp4`` (picture beside depth).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sjc_core.files import atomic
from sjc_core.files import pictures as files_pictures
from sjc_core.recipes.model import CameraConfig
from sjc_core.render.cameras import intrinsics, orbit_path, spiral_path

IMAGE_VIDEO = "hd_image.mp4"
DEPTH_VIDEO = "hd_image_depth.mp4"
FRAMES_DIR = "frames"


@dataclass(frozen=True)
class HdOptions:
    """Knobs of the HD render; defaults reproduce the reference (140 kept frames of 200)."""

    frames: int = 140
    subpixel: int = 4
    resolution: int = 128
    fps: int | None = None  # None: the recipe's camera.fps
    skip_fraction: float = 0.3
    decode_batch: int = 1
    chunk_rays: int = 16384


@dataclass
class HdResult:
    image_video: Path
    depth_video: Path
    frames_dir: Path
    frame_count: int
    frame_size: tuple[int, int]  # (height, width) of a decoded picture


def hd_poses(camera: CameraConfig, radius: float, frames: int, skip_fraction: float) -> list[np.ndarray]:
    """``frames`` test poses; on a spiral, drop its first ``skip_fraction`` (overhead) part.

    The spiral is laid out with ``round(frames / (1 - skip))`` poses so that exactly
    ``frames`` remain: 140 kept of 200 for the defaults, the reference's numbers.
    """
    if camera.test_path == "orbit":
        return orbit_path(radius, camera.orbit_elevation, frames)
    total = max(frames, round(frames / (1.0 - skip_fraction)))
    poses = spiral_path(radius, radius, total, camera.spiral_rounds)
    return poses[total - frames :]


@torch.no_grad()
def render_features(
    field: Any, fov_deg: float, c2w: np.ndarray, size: int, subpixel: int, resolution: int, chunk_rays: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [C, resolution, resolution] and depth [size*f, size*f] of one view.

    Rendering a ``size*f`` image with the same field of view casts exactly the reference's
    subpixel rays (pixel (i, j) of the small image gets rays at offsets (k + 0.5)/f - 0.5).
    """
    from sjc_core.render.view import render_view

    big = size * subpixel
    out = render_view(field, intrinsics(fov_deg, big, big), c2w, big, big, chunk_rays=chunk_rays, keep_weights=False)
    image = out.image[None].float()
    if image.shape[-1] != resolution:
        image = F.interpolate(image, size=(resolution, resolution), mode="bilinear", align_corners=False,
                              antialias=resolution < image.shape[-1])
    return image[0], out.depth.float()


def _frame_path(folder: Path, index: int) -> Path:
    return folder / f"frame_{index:04d}.png"


def render_hd(
    parts: Any,
    recipe: Any,
    plan: Any,
    out_dir: Path,
    options: HdOptions = HdOptions(),
    on_frame: Callable[[int, int], None] | None = None,
) -> HdResult:
    """Render, decode and write the two HD videos of a trained field (see module docstring)."""
    camera = recipe.settings.camera
    poses = hd_poses(camera, plan.radius, options.frames, options.skip_fraction)
    frames_dir = out_dir / FRAMES_DIR
    prior, field = parts.prior, parts.field
    depths: list[np.ndarray] = []
    pending: list[torch.Tensor] = []
    size: tuple[int, int] = (0, 0)
    written = 0
    for stale in frames_dir.glob("frame_*.png"):  # a longer earlier render must not leak into this one
        stale.unlink()
    field.eval()

    def flush() -> None:
        nonlocal written, size
        if not pending:
            return
        with torch.no_grad():
            pictures = prior.to_rgb(torch.stack(pending))
        for picture in pictures:
            array = files_pictures.to_uint8(picture)
            size = array.shape[:2]
            files_pictures.write_image(_frame_path(frames_dir, written), array)
            written += 1
            if on_frame:
                on_frame(written, len(poses))
        pending.clear()

    try:
        for pose in poses:
            features, depth = render_features(
                field, camera.test_fov, pose, plan.render_size, options.subpixel, options.resolution, options.chunk_rays
            )
            pending.append(features)
            depths.append(depth.cpu().numpy())
            if len(pending) >= options.decode_batch:
                flush()
        flush()
    finally:
        field.train()

    fps = options.fps or camera.fps
    near = float(min(d.min() for d in depths))
    far = float(max(d.max() for d in depths))
    paths = [_frame_path(frames_dir, i) for i in range(written)]
    image_video = write_video_stream(out_dir / IMAGE_VIDEO, lambda: _read_frames(paths), fps)
    depth_video = write_video_stream(
        out_dir / DEPTH_VIDEO, lambda: _with_depth(paths, depths, near, far), fps
    )
    return HdResult(image_video, depth_video, frames_dir, written, (int(size[0]), int(size[1])))


def _read_frames(paths: list[Path]) -> Iterator[np.ndarray]:
    import imageio.v3 as iio

    for path in paths:
        yield np.asarray(iio.imread(path))[..., :3]


def _with_depth(paths: list[Path], depths: list[np.ndarray], near: float, far: float) -> Iterator[np.ndarray]:
    """Each picture beside its depth map (resized smoothly to the picture's size, one depth scale for all)."""
    for picture, depth in zip(_read_frames(paths), depths):
        h, w = picture.shape[:2]
        resized = F.interpolate(torch.as_tensor(depth)[None, None], size=(h, w), mode="bilinear",
                                align_corners=False)[0, 0]
        yield np.concatenate([picture, files_pictures.depth_to_rgb(resized, near=near, far=far)], axis=1)


def write_video_stream(path: Path, frames: Callable[[], Iterator[np.ndarray]], fps: int) -> Path:
    """Write frames to an mp4 one at a time (HD frames do not all fit in memory).

    Falls back to :func:`sjc_core.files.pictures.write_video` (which writes a GIF when ffmpeg
    cannot run) if streaming through ffmpeg fails.
    """
    import imageio.v2 as imageio

    try:
        with atomic.atomic_path(path) as tmp:
            writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=1)
            try:
                for frame in frames():
                    writer.append_data(_even(frame))
            finally:
                writer.close()
        return path
    except Exception:  # ffmpeg missing or broken: the non-streaming writer has the GIF fallback
        return files_pictures.write_video(path, list(frames()), fps=fps)


def _even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if (h % 2 or w % 2) else frame
