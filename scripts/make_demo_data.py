"""Make ``data/demo``: posed pictures of a procedural snowman, rendered by our own renderer.

The snowman is a set of analytic shapes (spheres, capsules, a cone, a torus, cylinders)
turned into a volume density ``sigma_max * sigmoid(-sdf / softness)`` with baked diffuse
shading, so it looks solid and reads the same from every side. It faces **-x**, which
the training sampler labels ``front`` (azimuth near 0 puts the camera at -x); its carrot
nose, eyes and buttons are on that side, the scarf's tail hangs on the +z side, the +z
arm is raised and the -z arm hangs down: no two sides look alike.

Training cameras are drawn by ``sample_train_view`` (seeded) at radius 1.5 with a fixed
field of view; held-out cameras sit on an orbit. Everything is deterministic.

    python scripts/make_demo_data.py            # writes data/demo (about 0.35 MB, ~20 CPU-minutes)
    python scripts/make_demo_data.py --out /tmp/small --train 24 --test 4 --size 32
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sjc_core.files.atomic import write_text
from sjc_core.files.pictures import to_uint8, write_image
from sjc_core.fit.transforms import write_transforms
from sjc_core.recipes.model import CameraConfig
from sjc_core.render.cameras import intrinsics, orbit_path, sample_train_view
from sjc_core.render.view import render_view

BACKGROUND = 0.5  # mid grey: what a field whose background features start at 0 shows under 2*sigmoid-1
LIGHT = (-0.55, 0.75, 0.35)  # from above, in front (-x) and a little to +z

SNOW = (0.93, 0.94, 0.97)
CARROT = (1.0, 0.45, 0.05)
COAL = (0.06, 0.06, 0.07)
HAT = (0.80, 0.07, 0.08)
BAND = (0.98, 0.80, 0.10)
SCARF = (0.10, 0.62, 0.18)
WOOD = (0.42, 0.25, 0.10)


def _length(v: torch.Tensor) -> torch.Tensor:
    """Euclidean length over the last axis (much faster than ``Tensor.norm`` on CPU)."""
    return (v * v).sum(dim=-1).sqrt()


def _sphere(p: torch.Tensor, centre: tuple[float, float, float], radius: float) -> torch.Tensor:
    return _length(p - p.new_tensor(centre)) - radius


def _capsule(p: torch.Tensor, a: tuple[float, float, float], b: tuple[float, float, float], radius: float) -> torch.Tensor:
    a_t, b_t = p.new_tensor(a), p.new_tensor(b)
    ab = b_t - a_t
    h = ((p - a_t) @ ab / ab.dot(ab)).clamp(0.0, 1.0)
    return _length(p - a_t - h[:, None] * ab) - radius


def _cylinder_y(p: torch.Tensor, centre: tuple[float, float, float], radius: float, half_height: float) -> torch.Tensor:
    q = p - p.new_tensor(centre)
    d = torch.stack([_length(q[:, [0, 2]]) - radius, q[:, 1].abs() - half_height], dim=-1)
    return _length(d.clamp(min=0.0)) + d.max(dim=-1).values.clamp(max=0.0)


def _torus_y(p: torch.Tensor, centre: tuple[float, float, float], major: float, minor: float) -> torch.Tensor:
    q = p - p.new_tensor(centre)
    ring = _length(q[:, [0, 2]]) - major
    return (ring * ring + q[:, 1] * q[:, 1]).sqrt() - minor


def _cone_x(p: torch.Tensor, base_x: float, tip_x: float, y: float, z: float, radius: float) -> torch.Tensor:
    """A cone along -x from a base disc at ``base_x`` to a tip at ``tip_x`` (tip_x < base_x)."""
    length = base_x - tip_x
    s = ((base_x - p[:, 0]) / length).clamp(0.0, 1.0)  # 0 at the base, 1 at the tip
    radial = ((p[:, 1] - y) ** 2 + (p[:, 2] - z) ** 2).sqrt()
    side = (radial - radius * (1.0 - s)) * (length / math.hypot(length, radius))
    caps = torch.maximum(p[:, 0] - base_x, tip_x - p[:, 0])
    return torch.maximum(side, caps)


def _on_surface(centre: tuple[float, float, float], radius: float, direction: tuple[float, float, float]) -> tuple[float, float, float]:
    d = np.asarray(direction, dtype=np.float64)
    return tuple((np.asarray(centre) + radius * d / np.linalg.norm(d)).tolist())  # type: ignore[return-value]


HEAD = ((0.0, 0.28, 0.0), 0.13)
MIDDLE = ((0.0, 0.02, 0.0), 0.19)
BASE = ((0.0, -0.32, 0.0), 0.26)


def _spheres() -> list[tuple[tuple[float, float, float], float, tuple[float, float, float]]]:
    """(centre, radius, albedo) of the three snow balls, the eyes and the coal buttons."""
    spheres = [(BASE[0], BASE[1], SNOW), (MIDDLE[0], MIDDLE[1], SNOW), (HEAD[0], HEAD[1], SNOW)]
    for side in (0.40, -0.40):  # eyes
        spheres.append((_on_surface(HEAD[0], HEAD[1], (-0.85, 0.38, side)), 0.022, COAL))
    for dy in (0.10, -0.03):  # coal buttons down the front of the middle ball
        spheres.append((_on_surface(MIDDLE[0], MIDDLE[1], (-1.0, dy / MIDDLE[1], 0.0)), 0.024, COAL))
    for dy in (0.05, -0.10):  # and of the base
        spheres.append((_on_surface(BASE[0], BASE[1], (-1.0, dy / BASE[1], 0.0)), 0.026, COAL))
    return spheres


SPHERES = _spheres()


def _bounded(shape, centre: tuple[float, float, float], radius: float, albedo: tuple[float, float, float]):
    """A part: its distance function, a sphere that bounds it, and its albedo."""
    return shape, (centre, radius), albedo


def _capsule_part(a, b, radius, albedo):
    mid = tuple((np.add(a, b) / 2).tolist())
    half = float(np.linalg.norm(np.subtract(b, a)) / 2)
    return _bounded(lambda p: _capsule(p, a, b, radius), mid, half + radius, albedo)


OTHER_PARTS = [
    _bounded(lambda p: _cone_x(p, base_x=-0.10, tip_x=-0.29, y=0.27, z=0.0, radius=0.034), (-0.195, 0.27, 0.0), 0.105, CARROT),
    _bounded(lambda p: _cylinder_y(p, (0.0, 0.395, 0.0), 0.165, 0.013), (0.0, 0.395, 0.0), 0.167, HAT),  # brim
    _bounded(lambda p: _cylinder_y(p, (0.0, 0.475, 0.0), 0.098, 0.08), (0.0, 0.475, 0.0), 0.127, HAT),  # crown
    _bounded(lambda p: _cylinder_y(p, (0.0, 0.43, 0.0), 0.101, 0.018), (0.0, 0.43, 0.0), 0.103, BAND),
    _bounded(lambda p: _torus_y(p, (0.0, 0.155, 0.0), 0.112, 0.036), (0.0, 0.155, 0.0), 0.148, SCARF),
    _capsule_part((-0.05, 0.13, 0.10), (-0.10, -0.07, 0.19), 0.032, SCARF),  # the scarf's tail
    _capsule_part((0.0, 0.06, 0.16), (0.03, 0.30, 0.43), 0.022, WOOD),  # raised arm (+z)
    _capsule_part((0.0, 0.04, -0.16), (0.02, -0.13, -0.42), 0.022, WOOD),  # lowered arm (-z)
]


def snowman_parts(p: torch.Tensor, cutoff: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed distances of every part [N, P] and their albedos [P, 3].

    A part is evaluated only at points within ``cutoff`` of its bounding sphere; elsewhere
    the distance to that sphere stands in (a lower bound, and far enough that the density
    there is negligible), which makes the thin parts nearly free.
    """
    centres = p.new_tensor([c for c, _, _ in SPHERES] + [b[0] for _, b, _ in OTHER_PARTS])
    radii = p.new_tensor([r for _, r, _ in SPHERES] + [b[1] for _, b, _ in OTHER_PARTS])
    distances = torch.cdist(p, centres) - radii  # exact for spheres, a bound for the rest
    for offset, (shape, _, _) in enumerate(OTHER_PARTS):
        column = len(SPHERES) + offset
        near = (distances[:, column] < cutoff).nonzero().squeeze(1)
        if near.numel():
            distances[near, column] = shape(p[near])
    albedo = p.new_tensor([a for _, _, a in SPHERES] + [a for _, _, a in OTHER_PARTS])
    return distances, albedo


class SnowmanField(nn.Module):
    """An analytic radiance field (the Field contract) of the snowman on a grey background.

    Colours are returned in [0, 1] directly and the background is flat grey, so the
    renders are the pictures themselves. ``step_size`` sets the renderer's march; the box
    hugs the snowman (half size 0.62) so rays that miss it cost nothing.
    """

    def __init__(self, step_size: float = 0.004, sigma_max: float = 400.0, softness: float | None = None, box_half: float = 0.62):
        super().__init__()
        self.register_buffer("aabb", torch.tensor([[-box_half] * 3, [box_half] * 3], dtype=torch.float32), persistent=False)
        self.step_size = float(step_size)
        self.weight_threshold = 1e-4
        self.sigma_max = sigma_max
        self.softness = step_size if softness is None else softness  # a surface about one step thick
        self.cutoff = max(0.05, 12 * self.softness)  # beyond this the density is below 1e-5 * sigma_max
        light = torch.tensor(LIGHT, dtype=torch.float32)
        self.register_buffer("light", light / light.norm(), persistent=False)
        self._coarse_cells = 48
        self._coarse = self._coarse_bound(box_half)

    def _coarse_bound(self, box_half: float) -> torch.Tensor:
        """A lower bound of the distance to the snowman in each cell of a coarse grid.

        Distances change at most as fast as the point moves, so the distance at a cell's
        centre minus half the cell's diagonal bounds it over the whole cell: samples in
        cells whose bound exceeds the cutoff are skipped without evaluating any part.
        """
        n = self._coarse_cells
        cell = 2 * box_half / n
        centres = -box_half + (torch.arange(n, dtype=torch.float32) + 0.5) * cell
        grid = torch.stack(torch.meshgrid(centres, centres, centres, indexing="ij"), dim=-1).reshape(-1, 3)
        return (self.sdf(grid) - cell * math.sqrt(3) / 2).reshape(n, n, n)

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        return snowman_parts(points, self.cutoff)[0].min(dim=-1).values

    def density(self, points: torch.Tensor) -> torch.Tensor:
        n = self._coarse_cells
        lo, hi = self.aabb[0], self.aabb[1]
        cell = ((points - lo) / (hi - lo) * n).long().clamp(0, n - 1)
        live = (self._coarse[cell[:, 0], cell[:, 1], cell[:, 2]] < self.cutoff).nonzero().squeeze(1)
        sigma = points.new_zeros(points.shape[0])
        if live.numel():
            sigma[live] = self.sigma_max * torch.sigmoid(-self.sdf(points[live]) / self.softness)
        return sigma

    def features(self, points: torch.Tensor) -> torch.Tensor:
        distances, albedo = snowman_parts(points, self.cutoff)
        nearest = distances.min(dim=-1)
        colour = albedo[nearest.indices]
        offsets = torch.eye(3, dtype=points.dtype) * 1e-3
        grad = torch.stack([self.sdf(points + offsets[i]) - nearest.values for i in range(3)], dim=-1)
        normal = grad / _length(grad)[:, None].clamp(min=1e-8)
        shade = 0.6 + 0.4 * (normal @ self.light).clamp(min=0.0)  # bright enough to stand out from grey when unlit
        return (colour * shade[:, None]).clamp(0.0, 1.0)

    def background(self, directions: torch.Tensor) -> torch.Tensor:
        return directions.new_full((directions.shape[0], 3), BACKGROUND)

    def param_groups(self, lr: float) -> list[dict]:
        return []


@dataclass(frozen=True)
class DemoSpec:
    """What to generate: counts, picture size, cameras and render quality."""

    train: int = 100
    test: int = 10
    size: int = 64
    fov_deg: float = 50.0
    radius: float = 1.5
    seed: int = 0
    subpixel: int = 2
    step_size: float = 0.004
    test_elevation: float = 20.0


def train_poses(spec: DemoSpec) -> list[np.ndarray]:
    """Cameras drawn exactly like the SJC training sampler (seeded), at a fixed field of view."""
    rng = np.random.default_rng(spec.seed)
    config = CameraConfig(radius=spec.radius, fov_range=(spec.fov_deg, spec.fov_deg))
    return [sample_train_view(rng, config).c2w for _ in range(spec.train)]


def test_poses(spec: DemoSpec) -> list[np.ndarray]:
    """An orbit at a fixed elevation, offset by half a step so no pose repeats a round number."""
    poses = orbit_path(spec.radius, spec.test_elevation, spec.test * 2)
    return poses[1::2]


@torch.no_grad()
def render_pictures(field: nn.Module, poses: list[np.ndarray], spec: DemoSpec) -> list[np.ndarray]:
    """uint8 [H, W, 3] pictures of ``field`` from ``poses``."""
    k = intrinsics(spec.fov_deg, spec.size, spec.size)
    out = []
    for pose in poses:
        result = render_view(field, k, pose, spec.size, spec.size, subpixel=spec.subpixel, chunk_rays=2048)
        out.append(to_uint8(result.image))
    return out


def write_split(out: Path, split: str, pictures: list, poses: list, fov_deg: float) -> None:
    """One split in the NeRF-synthetic layout: SPLIT/r_NNN.png and transforms_SPLIT.json;
    pictures a smaller earlier run left behind are removed (no orphans)."""
    frames = []
    for index, (picture, pose) in enumerate(zip(pictures, poses)):
        name = f"{split}/r_{index:03d}"
        write_image(out / f"{name}.png", picture)
        frames.append((f"./{name}", pose))
    write_transforms(out / f"transforms_{split}.json", fov_deg, frames)
    written = {out / split / f"r_{index:03d}.png" for index in range(len(poses))}
    for stale in (out / split).glob("r_*.png"):
        if stale not in written:
            stale.unlink()


def make_demo(out: Path, spec: DemoSpec = DemoSpec(), log=None) -> Path:
    """Render and write the train and test splits (PNG + transforms_*.json) and a README."""
    torch.manual_seed(spec.seed)
    field = SnowmanField(step_size=spec.step_size)
    for split, poses in (("train", train_poses(spec)), ("test", test_poses(spec))):
        began = time.perf_counter()
        write_split(out, split, render_pictures(field, poses, spec), poses, spec.fov_deg)
        if log:
            log(f"{split}: {len(poses)} views in {time.perf_counter() - began:.1f} s")
    write_text(out / "README.md", _readme(spec))
    return out


def _readme(spec: DemoSpec) -> str:
    return f"""# Demo posed images: a procedural snowman

Made by `python scripts/make_demo_data.py` (deterministic, seed {spec.seed}); rendered by
sjc's own volume renderer from an analytic snowman (subpixel {spec.subpixel} anti-aliasing).

- `transforms_train.json`: {spec.train} views, {spec.size}x{spec.size} RGB, cameras drawn like the
  SJC training sampler (`sample_train_view`) at radius {spec.radius} with a fixed
  {spec.fov_deg:g}-degree horizontal field of view.
- `transforms_test.json`: {spec.test} held-out views on an orbit at {spec.test_elevation:g} degrees elevation.
- NeRF-synthetic layout: `camera_angle_x` in radians, `file_path` without extension,
  `transform_matrix` camera-to-world, OpenGL (camera looks along -z). The world is
  **y-up** (do not pass `--z-up`); the object sits in the [-1, 1]^3 box.
- Background: uniform mid grey (0.5), opaque RGB (no alpha).
- The snowman faces **-x** (what the training sampler calls the front view): carrot
  nose, eyes and buttons there; red hat with a yellow band; green scarf whose tail hangs
  on the +z side; the +z arm is raised, the -z arm hangs down.

Fit it with `sjc fit data/demo`.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "demo")
    parser.add_argument("--train", type=int, default=DemoSpec.train)
    parser.add_argument("--test", type=int, default=DemoSpec.test)
    parser.add_argument("--size", type=int, default=DemoSpec.size)
    parser.add_argument("--fov", type=float, default=DemoSpec.fov_deg)
    parser.add_argument("--seed", type=int, default=DemoSpec.seed)
    parser.add_argument("--subpixel", type=int, default=DemoSpec.subpixel)
    parser.add_argument("--step-size", type=float, default=DemoSpec.step_size)
    args = parser.parse_args(argv)
    spec = DemoSpec(
        train=args.train, test=args.test, size=args.size, fov_deg=args.fov, seed=args.seed,
        subpixel=args.subpixel, step_size=args.step_size,
    )
    make_demo(args.out, spec, log=lambda line: print(line, file=sys.stderr))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
