"""Cameras: the reference's intrinsics, look-at poses, training-view sampler and test paths.

World is y-up; a camera-to-world matrix looks along its -z axis (OpenGL). All poses are
float64 numpy arrays; renderers round rays to float32 themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sjc_core.recipes.model import CameraConfig

SIDE_LABELS = ("front", "side", "back", "side")
LABEL_PROMPTS = {
    "front": "front view of",
    "side": "side view of",
    "back": "backside view of",
    "overhead": "overhead view of",
}


@dataclass(frozen=True)
class TrainView:
    """One training camera: pose, field of view and the view label used in prompts."""

    c2w: np.ndarray
    fov_deg: float
    label: str
    azimuth_deg: float
    polar_draw_deg: float


def intrinsics(fov_deg: float, height: int, width: int) -> np.ndarray:
    """The reference's K: pixel (col, row) maps to camera ((col-cx)/f, -(row-cy)/f, -1)."""
    focal = (width / 2) / math.tan(math.radians(fov_deg) / 2)
    return np.array(
        [
            [focal, 0.0, -(width / 2 - 0.5)],
            [0.0, -focal, -(height / 2 - 0.5)],
            [0.0, 0.0, -1.0],
        ]
    )


def look_at(eye: np.ndarray, target: np.ndarray | None = None, up: np.ndarray | None = None) -> np.ndarray:
    """Camera-to-world pose looking from ``eye`` at ``target``; columns x, y, z, eye."""
    eye = np.asarray(eye, dtype=np.float64)
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    up = np.array([0.0, 1.0, 0.0]) if up is None else np.asarray(up, dtype=np.float64)
    z = _normalize(eye - target)
    x = np.cross(up, z)
    if np.linalg.norm(x) < 1e-9:  # looking straight along up: any horizontal x will do
        x = np.cross(np.array([0.0, 0.0, 1.0]), z)
    x = _normalize(x)
    y = _normalize(np.cross(z, x))
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, eye
    return pose


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def view_label(azimuth_deg: float, polar_draw_deg: float, overhead_below: float = 30.0) -> str:
    """front/side/back/side by quadrant of (azimuth + 45) mod 360, or overhead."""
    if polar_draw_deg < overhead_below:
        return "overhead"
    quadrant = int(((azimuth_deg + 45.0) % 360.0) // 90.0)
    return SIDE_LABELS[quadrant]


def eye_on_sphere(radius: float, azimuth_deg: float, polar_draw_deg: float) -> np.ndarray:
    """The reference's eye position: polar angle arccos(1 - 2v/pi), azimuth measured as pi - theta."""
    v = float(np.clip(math.radians(polar_draw_deg), 1e-2, math.pi - 1e-2))
    phi = math.acos(1 - 2 * v / math.pi)
    theta = math.radians(azimuth_deg)
    return np.array(
        [
            radius * math.sin(phi) * math.cos(math.pi - theta),
            radius * math.cos(phi),
            radius * math.sin(phi) * math.sin(math.pi - theta),
        ]
    )


def sample_train_view(
    rng: np.random.Generator,
    config: CameraConfig,
    radius: float | None = None,
    fov_range: tuple[float, float] | None = None,
) -> TrainView:
    """Draw one training camera; ``radius``/``fov_range`` override the config (posed priors)."""
    radius = config.radius if radius is None else radius
    fov_low, fov_high = config.fov_range if fov_range is None else fov_range
    azimuth = rng.uniform(*config.azimuth_range)
    polar_draw = rng.uniform(*config.polar_range)
    fov = rng.uniform(fov_low, fov_high)
    eye = eye_on_sphere(radius, azimuth, polar_draw)
    return TrainView(
        c2w=look_at(eye),
        fov_deg=float(fov),
        label=view_label(azimuth, polar_draw, config.overhead_below),
        azimuth_deg=float(azimuth),
        polar_draw_deg=float(polar_draw),
    )


def camera_angles(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(azimuth, polar draw) in degrees of cameras [N, 4, 4], inverting cameras.eye_on_sphere.

    eye_on_sphere puts the eye at r (sin p cos(pi - a), cos p, sin p sin(pi - a)) with the
    polar angle p = arccos(1 - 2 v / pi), so v = (1 - cos p) * pi / 2 (90 * (1 - y/r) in
    degrees) and a = pi - atan2(z, x).
    """
    eyes = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)[:, :3, 3]
    directions = eyes / np.maximum(np.linalg.norm(eyes, axis=-1), 1e-12)[:, None]
    polar_draw = 90.0 * (1.0 - np.clip(directions[:, 1], -1.0, 1.0))
    azimuth = np.degrees(np.pi - np.arctan2(directions[:, 2], directions[:, 0])) % 360.0
    return azimuth, polar_draw


def pick_posed_view(rng: np.random.Generator, poses: np.ndarray, fov_deg: float, overhead_below: float = 30.0) -> TrainView:
    """One of a posed image set's own cameras, drawn uniformly (``camera.poses = "prior"``).

    Training where the data was taken lets a prior made of those pictures (the empirical
    prior) supervise each render with the picture of that very camera.
    """
    pose = np.asarray(poses[int(rng.integers(len(poses)))], dtype=np.float64)
    azimuth, polar_draw = (float(a[0]) for a in camera_angles(pose))
    return TrainView(
        c2w=pose,
        fov_deg=float(fov_deg),
        label=view_label(azimuth, polar_draw, overhead_below),
        azimuth_deg=azimuth,
        polar_draw_deg=polar_draw,
    )


def turned_views(view: TrainView, count: int, overhead_below: float = 30.0) -> list[TrainView]:
    """``view`` and ``count - 1`` copies turned about the world's up axis by 360/count degrees each
    (same elevation, distance and field of view; azimuths a, a + 360/count, ...): the cameras a
    multi-view prior scores together (MVDream: 4 at 90 degrees). Uses no randomness."""
    views = [view]
    for k in range(1, count):
        turn = math.radians(360.0 * k / count)
        rotation = np.eye(4)
        rotation[0, 0], rotation[0, 2], rotation[2, 0], rotation[2, 2] = math.cos(turn), math.sin(turn), -math.sin(turn), math.cos(turn)
        azimuth = (view.azimuth_deg + 360.0 * k / count) % 360.0
        views.append(TrainView(
            c2w=rotation @ view.c2w,
            fov_deg=view.fov_deg,
            label=view_label(azimuth, view.polar_draw_deg, overhead_below),
            azimuth_deg=azimuth,
            polar_draw_deg=view.polar_draw_deg,
        ))
    return views


def spiral_path(radius: float, height: float, frames: int, rounds: int) -> list[np.ndarray]:
    """The reference's test spiral: descends from ``height`` while circling ``rounds`` times.

    The horizontal radius grows as radius*sin(ratio*pi/2), at least 0.5, so the first
    frames look down from above (the HD renderer skips them).
    """
    poses = []
    for i in range(frames):
        ratio = (i + 1) / frames
        angle = math.radians(ratio * 360.0 * rounds)
        ring = max(radius * math.sin(ratio * math.pi / 2), 0.5)
        eye = np.array([ring * math.cos(angle), height * (1 - ratio), ring * math.sin(angle)])
        poses.append(look_at(eye))
    return poses


def orbit_path(radius: float, elevation_deg: float, frames: int) -> list[np.ndarray]:
    """A full circle at a fixed elevation, starting in front (+z)."""
    elevation = math.radians(elevation_deg)
    poses = []
    for i in range(frames):
        angle = 2 * math.pi * i / frames
        eye = radius * np.array(
            [math.cos(elevation) * math.sin(angle), math.sin(elevation), math.cos(elevation) * math.cos(angle)]
        )
        poses.append(look_at(eye))
    return poses


def test_path(config: CameraConfig, radius: float | None = None) -> list[np.ndarray]:
    """The turntable poses the recipe asks for."""
    radius = config.radius if radius is None else radius
    if config.test_path == "orbit":
        return orbit_path(radius, config.orbit_elevation, config.test_frames)
    return spiral_path(radius, radius, config.test_frames, config.spiral_rounds)
