"""Objects drawn by a renderer that shares nothing with sjc's: sphere tracing of signed
distance functions in numpy, for measuring sjc on data it did not draw itself.

    python scripts/make_independent_suite.py --out data/independent

The suite of ``scripts/make_object_suite.py`` is rendered by sjc's own volume renderer, so a
field can match it exactly. These objects differ the way real captures do: one ray through
each pixel's centre (hard, aliased silhouettes and textures; pixel centres at +0.5 as in
Blender: the same rays as sjc's intrinsics give, checked in tests), opaque surfaces,
procedural "photographic" textures (marble, wood, granite noise), Lambert shading, and RGBA pictures on a transparent background or pictures
on an opaque mid-grey or dark backdrop. Cameras are drawn over the upper hemisphere, and for
one object below the equator too; one object has a thin part (a lamp's pole).

Layout: NeRF-synthetic (``transforms_train.json``, ``transforms_test.json``, ``train/``,
``test/``), 100 training and 20 held-out views at 64x64 by default.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np

Field = Callable[[np.ndarray], np.ndarray]  # points [N, 3] -> values [N]


# ---- noise and textures ------------------------------------------------------------------------


def _hash(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    h = (ix * 73856093) ^ (iy * 19349663) ^ (iz * 83492791) ^ (seed * 2654435761)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFFFF).astype(np.float64) / 0xFFFFFF


def value_noise(p: np.ndarray, seed: int = 0) -> np.ndarray:
    """Smooth lattice noise in [0, 1] at points [N, 3] (trilinear with a smoothstep fade)."""
    base = np.floor(p).astype(np.int64)
    f = p - base
    f = f * f * (3 - 2 * f)
    out = np.zeros(len(p))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = (f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1]) * (f[:, 2] if dz else 1 - f[:, 2])
                out += w * _hash(base[:, 0] + dx, base[:, 1] + dy, base[:, 2] + dz, seed)
    return out


def fbm(p: np.ndarray, octaves: int = 4, seed: int = 0) -> np.ndarray:
    """Fractal sum of noise octaves, in about [0, 1]."""
    total, amplitude, norm = np.zeros(len(p)), 0.5, 0.0
    for octave in range(octaves):
        total += amplitude * value_noise(p * (2.0**octave), seed + octave)
        norm += amplitude
        amplitude *= 0.5
    return total / norm


def marble(p: np.ndarray) -> np.ndarray:
    veins = 0.5 + 0.5 * np.sin(6.0 * p[:, 0] + 9.0 * fbm(p * 2.5, 5, 1))
    light, dark = np.array([0.93, 0.91, 0.86]), np.array([0.35, 0.38, 0.45])
    return dark + (light - dark) * veins[:, None] ** 0.6


def wood(p: np.ndarray) -> np.ndarray:
    rings = np.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) * 14.0 + 3.0 * fbm(p * 3.0, 3, 2)
    grain = 0.5 + 0.5 * np.sin(rings * math.pi)
    light, dark = np.array([0.80, 0.58, 0.34]), np.array([0.42, 0.24, 0.11])
    return dark + (light - dark) * grain[:, None]


def granite(p: np.ndarray) -> np.ndarray:
    speckle = fbm(p * 9.0, 4, 3)
    spots = (value_noise(p * 22.0, 4) > 0.78).astype(float)
    grey = 0.30 + 0.45 * speckle
    colour = np.stack([grey * 1.05, grey * 0.97, grey * 0.92], axis=1)
    return np.clip(colour * (1 - 0.6 * spots[:, None]) + spots[:, None] * np.array([0.62, 0.28, 0.18]) * 0.6, 0, 1)


def painted(p: np.ndarray) -> np.ndarray:
    """Bands of colour with noisy edges (a painted toy)."""
    band = np.floor((p[:, 1] + 0.15 * fbm(p * 4.0, 3, 5)) * 6.0) % 3
    palette = np.array([[0.85, 0.20, 0.15], [0.95, 0.80, 0.25], [0.15, 0.35, 0.75]])
    return palette[band.astype(int)] * (0.85 + 0.15 * fbm(p * 12.0, 2, 6))[:, None]


# ---- shapes (signed distances; scaled to stay conservative for sphere tracing) -----------------


def sphere(p: np.ndarray, centre: tuple[float, float, float], radius: float) -> np.ndarray:
    return np.linalg.norm(p - np.asarray(centre), axis=1) - radius


def capsule(p: np.ndarray, a: tuple[float, float, float], b: tuple[float, float, float], radius: float) -> np.ndarray:
    a_, b_ = np.asarray(a), np.asarray(b)
    ab = b_ - a_
    t = np.clip(((p - a_) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a_ + t[:, None] * ab), axis=1) - radius


def cylinder(p: np.ndarray, y0: float, y1: float, radius: float) -> np.ndarray:
    d_r = np.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - radius
    d_y = np.maximum(y0 - p[:, 1], p[:, 1] - y1)
    outside = np.sqrt(np.maximum(d_r, 0) ** 2 + np.maximum(d_y, 0) ** 2)
    return outside + np.minimum(np.maximum(d_r, d_y), 0.0)


def torus(p: np.ndarray, major: float, minor: float, y: float) -> np.ndarray:
    q = np.stack([np.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - major, p[:, 1] - y], axis=1)
    return np.linalg.norm(q, axis=1) - minor


def vase(p: np.ndarray) -> np.ndarray:
    radius = 0.30 + 0.14 * np.sin(3.2 * p[:, 1] + 0.8) + 0.05 * np.cos(7.0 * p[:, 1])
    body = np.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - radius
    return 0.6 * np.maximum(body, np.abs(p[:, 1]) - 0.7)


def lamp(p: np.ndarray) -> np.ndarray:
    base = cylinder(p, -0.75, -0.68, 0.42)
    pole = capsule(p, (0.0, -0.7, 0.0), (0.0, 0.25, 0.0), 0.035)  # the thin part: about 2 voxels of 100^3
    shade = np.maximum(cylinder(p, 0.15, 0.55, 0.40) - 0.1 * (0.55 - p[:, 1]), -cylinder(p, 0.10, 0.60, 0.30))
    return np.minimum(np.minimum(base, pole), 0.8 * shade)


def rock(p: np.ndarray) -> np.ndarray:
    return 0.55 * (sphere(p, (0.0, -0.05, 0.0), 0.62) - 0.16 * (fbm(p * 2.2, 4, 9) - 0.5))


def toy(p: np.ndarray) -> np.ndarray:
    ring = torus(p, 0.45, 0.16, -0.35)
    ball = sphere(p, (0.0, 0.22, 0.0), 0.38)
    nose = sphere(p, (0.0, 0.25, 0.38), 0.09)  # a front that differs from the back
    return np.minimum(np.minimum(ring, ball), nose)


@dataclass(frozen=True)
class IndependentObject:
    name: str
    description: str
    distance: Field
    colour: Field
    background: tuple[float, float, float] | None  # None: RGBA on a transparent background
    elevation: tuple[float, float]  # degrees: the cameras' range above the equator (negative: below)


OBJECTS: dict[str, IndependentObject] = {
    o.name: o
    for o in (
        IndependentObject("vase", "marble vase, RGBA on transparent", vase, marble, None, (5.0, 70.0)),
        IndependentObject("lamp", "wooden lamp with a thin pole, mid-grey backdrop", lamp, wood, (0.5, 0.5, 0.5), (0.0, 60.0)),
        IndependentObject("rock", "granite rock, dark backdrop", rock, granite, (0.08, 0.08, 0.09), (5.0, 70.0)),
        IndependentObject("toy", "painted toy seen from below the equator too, RGBA", toy, painted, None, (-40.0, 60.0)),
    )
}


# ---- the renderer -----------------------------------------------------------------------------


def look_from(eye: np.ndarray) -> np.ndarray:
    """Camera-to-world (OpenGL: looks along -z, +y up) from ``eye`` towards the origin."""
    back = eye / np.linalg.norm(eye)
    right = np.cross(np.array([0.0, 1.0, 0.0]), back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, back, eye
    return pose


def pixel_rays(pose: np.ndarray, size: int, fov_deg: float) -> np.ndarray:
    """Unit directions [size*size, 3], row-major, of one ray through each pixel centre (+0.5)."""
    focal = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    cols, rows = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    dirs = np.stack([(cols - size / 2) / focal, -(rows - size / 2) / focal, -np.ones_like(cols)], -1).reshape(-1, 3)
    dirs = dirs @ pose[:3, :3].T
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def trace(obj: IndependentObject, pose: np.ndarray, size: int, fov_deg: float) -> np.ndarray:
    """One ray through each pixel centre; RGBA float [size, size, 4]."""
    dirs = pixel_rays(pose, size, fov_deg)
    origin = pose[:3, 3]
    t = np.zeros(len(dirs))
    hit = np.zeros(len(dirs), dtype=bool)
    alive = np.ones(len(dirs), dtype=bool)
    for _ in range(160):
        idx = np.nonzero(alive)[0]
        if idx.size == 0:
            break
        d = obj.distance(origin + t[idx, None] * dirs[idx])
        hit[idx[d < 1e-4]] = True
        t[idx] += d
        alive[idx] = (d >= 1e-4) & (t[idx] < 6.0)
    rgba = np.zeros((len(dirs), 4))
    if hit.any():
        points = origin + t[hit, None] * dirs[hit]
        eps = 1e-3
        normal = np.stack(
            [obj.distance(points + eps * e) - obj.distance(points - eps * e) for e in np.eye(3)], axis=1
        )
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9)
        light = np.array([0.4, 0.8, 0.45]) / np.linalg.norm([0.4, 0.8, 0.45])
        shade = 0.35 + 0.65 * np.clip(normal @ light, 0.0, 1.0)
        rgba[hit, :3] = np.clip(obj.colour(points) * shade[:, None], 0.0, 1.0)
        rgba[hit, 3] = 1.0
    if obj.background is not None:
        rgba[~hit, :3] = obj.background
        rgba[:, 3] = 1.0
    return rgba.reshape(size, size, 4)


def cameras(count: int, rng: np.random.Generator, elevation: tuple[float, float], radius: float) -> list[np.ndarray]:
    """Poses at ``radius``, azimuth uniform, elevation uniform in sin over the range."""
    low, high = (math.sin(math.radians(e)) for e in elevation)
    poses = []
    for _ in range(count):
        azimuth = rng.uniform(0, 2 * math.pi)
        y = rng.uniform(low, high)
        ring = math.sqrt(1 - y * y)
        eye = radius * np.array([ring * math.sin(azimuth), y, ring * math.cos(azimuth)])
        poses.append(look_from(eye))
    return poses


def make_object(obj: IndependentObject, out: Path, train: int = 100, test: int = 20, size: int = 64,
                fov_deg: float = 50.0, radius: float = 2.2, seed: int = 0) -> Path:
    rng = np.random.default_rng([seed, sum(map(ord, obj.name))])
    for split, count in (("train", train), ("test", test)):
        (out / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for index, pose in enumerate(cameras(count, rng, obj.elevation, radius)):
            rgba = trace(obj, pose, size, fov_deg)
            picture = rgba if obj.background is None else rgba[..., :3]
            iio.imwrite(out / split / f"r_{index}.png", (np.clip(picture, 0, 1) * 255 + 0.5).astype(np.uint8))
            frames.append({"file_path": f"./{split}/r_{index}", "transform_matrix": pose.round(10).tolist()})
        (out / f"transforms_{split}.json").write_text(
            json.dumps({"camera_angle_x": math.radians(fov_deg), "frames": frames}, indent=1) + "\n"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "independent")
    parser.add_argument("--objects", nargs="+", default=list(OBJECTS), choices=list(OBJECTS))
    parser.add_argument("--views", type=int, default=100)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    for name in args.objects:
        make_object(OBJECTS[name], args.out / name, args.views, args.test, args.size)
        print(f"wrote {args.out / name} ({OBJECTS[name].description})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
