"""Make ``data/suite``: six procedural objects for tuning and testing defaults (issue 15).

Each object is data: a list of parts (an analytic shape from ``make_demo_data``'s
primitives, or a box, optionally with shapes carved out of it) with an albedo, and a
background colour. They are rendered exactly like the demo snowman (same renderer, same
shading model, same seeded training cameras and held-out orbit) into the NeRF-synthetic
layout, one folder per object::

    data/suite/<object>/{train,test}/r_NNN.png
    data/suite/<object>/transforms_{train,test}.json

The objects differ from the snowman and from each other:

- ``chair``: thin legs and a thin backrest (thin parts), wood and a blue cushion.
- ``mug``: a hollow cup (a concavity you can see into) with a ring handle, on a saucer.
- ``sculpture``: saturated red, blue, yellow, green and magenta abstract shapes.
- ``molecule``: balls and sticks on a **white** background.
- ``mushroom``: a red-capped, white-spotted mushroom on a **dark** background.
- ``signpost``: an asymmetric board whose front (-x, the sampler's ``front``) is red with a
  white arrow and whose back (+x) is blue with a yellow bar.

Deterministic (seeded cameras, no randomness in the objects). A few seconds per object
at the defaults (a coarser march than the demo's, no subpixel anti-aliasing)::

    python scripts/make_object_suite.py --out data/suite [--views 100 --test 20 --size 64]
    python scripts/make_object_suite.py --out /tmp/suite --objects chair mug --views 12 --test 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # make_demo_data sits beside this file

import make_demo_data as demo

from sjc_core.files.atomic import write_text

Vec = tuple[float, float, float]
Shape = tuple  # ("sphere", centre, r) | ("capsule", a, b, r) | ("cylinder_y", centre, r, half_h)
#              | ("torus_y", centre, major, minor) | ("cone_x", base_x, tip_x, y, z, r) | ("box", centre, half_sizes)


def _box(p: torch.Tensor, centre: Vec, half: Vec) -> torch.Tensor:
    """Signed distance to an axis-aligned box (the one primitive the demo does not have)."""
    q = (p - p.new_tensor(centre)).abs() - p.new_tensor(half)
    return demo._length(q.clamp(min=0.0)) + q.max(dim=-1).values.clamp(max=0.0)


PRIMITIVES: dict[str, Callable[..., torch.Tensor]] = {
    "sphere": demo._sphere,
    "capsule": demo._capsule,
    "cylinder_y": demo._cylinder_y,
    "torus_y": demo._torus_y,
    "cone_x": lambda p, base_x, tip_x, y, z, r: demo._cone_x(p, base_x=base_x, tip_x=tip_x, y=y, z=z, radius=r),
    "box": _box,
}


def shape_distance(p: torch.Tensor, shape: Shape) -> torch.Tensor:
    kind, *args = shape
    return PRIMITIVES[kind](p, *args)


@dataclass(frozen=True)
class Part:
    """One coloured solid: ``shape`` minus every shape in ``carve``."""

    shape: Shape
    albedo: Vec
    carve: tuple[Shape, ...] = ()

    def distance(self, p: torch.Tensor) -> torch.Tensor:
        d = shape_distance(p, self.shape)
        for hole in self.carve:
            d = torch.maximum(d, -shape_distance(p, hole))
        return d


@dataclass(frozen=True)
class SuiteObject:
    name: str
    description: str
    background: Vec
    parts: tuple[Part, ...] = field(default_factory=tuple)

    def distances(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Signed distances [N, P] of every part and their albedos [P, 3]."""
        d = torch.stack([part.distance(p) for part in self.parts], dim=-1)
        return d, p.new_tensor([part.albedo for part in self.parts])


# ---- the objects ---------------------------------------------------------------------------------

WOOD = (0.55, 0.33, 0.14)
CUSHION = (0.15, 0.30, 0.85)
MUG = (0.05, 0.65, 0.60)
SAUCER = (0.95, 0.85, 0.55)
RED = (0.95, 0.05, 0.05)
BLUE = (0.05, 0.15, 0.95)
YELLOW = (1.0, 0.85, 0.0)
GREEN = (0.05, 0.80, 0.15)
MAGENTA = (0.90, 0.05, 0.80)
CARBON = (0.12, 0.12, 0.14)
OXYGEN = (0.90, 0.10, 0.10)
NITROGEN = (0.15, 0.25, 0.95)
STICK = (0.55, 0.55, 0.58)
STEM = (0.92, 0.88, 0.74)
SPOT = (0.98, 0.98, 0.96)
POST = (0.45, 0.45, 0.48)
WHITE = (0.97, 0.97, 0.97)


def _chair() -> SuiteObject:
    legs = tuple(
        Part(("capsule", (x, -0.45, z), (x, -0.06, z), 0.025), WOOD)
        for x in (-0.2, 0.2) for z in (-0.2, 0.2)
    )
    back_posts = tuple(Part(("capsule", (0.2, -0.04, z), (0.2, 0.45, z), 0.022), WOOD) for z in (-0.2, 0.2))
    slats = tuple(Part(("box", (0.2, y, 0.0), (0.018, 0.03, 0.2)), WOOD) for y in (0.18, 0.38))
    seat = Part(("box", (0.0, -0.04, 0.0), (0.24, 0.025, 0.24)), WOOD)
    cushion = Part(("box", (-0.01, 0.0, 0.0), (0.2, 0.02, 0.2)), CUSHION)
    return SuiteObject("chair", "a wooden chair with thin legs and a slatted back (+x), blue cushion",
                       (0.5, 0.5, 0.5), (*legs, *back_posts, *slats, seat, cushion))


def _mug() -> SuiteObject:
    body = Part(("cylinder_y", (0.0, -0.05, 0.0), 0.24, 0.26), MUG,
                carve=(("cylinder_y", (0.0, 0.05, 0.0), 0.19, 0.26),))  # open at the top: a concavity
    handle = (  # a C-shaped handle on the +z side, three capsules
        Part(("capsule", (0.0, 0.12, 0.22), (0.0, 0.12, 0.38), 0.035), MUG),
        Part(("capsule", (0.0, 0.12, 0.38), (0.0, -0.18, 0.38), 0.035), MUG),
        Part(("capsule", (0.0, -0.18, 0.38), (0.0, -0.18, 0.22), 0.035), MUG),
    )
    saucer = Part(("cylinder_y", (0.0, -0.34, 0.0), 0.42, 0.025), SAUCER)
    rim = Part(("torus_y", (0.0, -0.32, 0.0), 0.40, 0.025), SAUCER)
    return SuiteObject("mug", "a hollow teal mug (open top) with a handle on +z, on a cream saucer",
                       (0.5, 0.5, 0.5), (body, *handle, saucer, rim))


def _sculpture() -> SuiteObject:
    return SuiteObject("sculpture", "saturated abstract shapes: red ball, blue ring, yellow cone, green and magenta rods",
                       (0.5, 0.5, 0.5), (
        Part(("sphere", (0.0, -0.25, 0.0), 0.22), RED),
        Part(("torus_y", (0.0, 0.12, 0.0), 0.26, 0.05), BLUE),
        Part(("cone_x", 0.05, -0.40, 0.12, 0.0, 0.11), YELLOW),  # points to the front (-x)
        Part(("capsule", (0.0, -0.05, 0.0), (0.12, 0.48, -0.15), 0.045), GREEN),
        Part(("capsule", (0.05, -0.3, 0.15), (0.25, 0.2, 0.40), 0.04), MAGENTA),
        Part(("box", (0.0, -0.50, 0.0), (0.18, 0.03, 0.18)), BLUE),
    ))


def _molecule() -> SuiteObject:
    atoms = [((0.0, 0.0, 0.0), 0.14, CARBON), ((0.32, 0.18, 0.05), 0.11, OXYGEN),
             ((-0.30, 0.22, -0.12), 0.11, NITROGEN), ((0.05, -0.35, 0.18), 0.10, OXYGEN),
             ((-0.08, 0.05, 0.38), 0.09, NITROGEN), ((0.10, 0.30, -0.35), 0.09, CARBON)]
    parts = [Part(("sphere", c, r), a) for c, r, a in atoms]
    parts += [Part(("capsule", (0.0, 0.0, 0.0), c, 0.03), STICK) for c, _, _ in atoms[1:]]
    return SuiteObject("molecule", "a ball-and-stick molecule (dark, red and blue atoms) on a white background",
                       (1.0, 1.0, 1.0), tuple(parts))


def _mushroom() -> SuiteObject:
    cap_centre = (0.0, 0.0, 0.0)
    cap = Part(("sphere", cap_centre, 0.40), RED, carve=(("cylinder_y", (0.0, -0.3, 0.0), 0.6, 0.3),))  # upper half
    spots = tuple(Part(("sphere", demo._on_surface(cap_centre, 0.40, d), 0.055), SPOT)
                  for d in ((-0.6, 0.6, 0.0), (0.2, 0.8, 0.5), (0.3, 0.6, -0.6), (0.0, 1.0, 0.0), (-0.3, 0.5, -0.7), (0.7, 0.4, 0.1)))
    stem = Part(("cylinder_y", (0.0, -0.25, 0.0), 0.11, 0.25), STEM)
    ground = Part(("cylinder_y", (0.0, -0.52, 0.0), 0.30, 0.02), GREEN)
    return SuiteObject("mushroom", "a red, white-spotted mushroom on a green disc, on a dark background",
                       (0.05, 0.05, 0.06), (cap, *spots, stem, ground))


def _signpost() -> SuiteObject:
    """Front (-x): red board with a white arrow pointing to +z. Back (+x): blue board with a yellow bar."""
    return SuiteObject("signpost", "a sign whose front (-x) is red with a white arrow and whose back (+x) is blue with a yellow bar",
                       (0.5, 0.5, 0.5), (
        Part(("capsule", (0.0, -0.55, 0.0), (0.0, 0.05, 0.0), 0.03), POST),
        Part(("box", (-0.02, 0.22, 0.0), (0.02, 0.17, 0.36)), RED),  # front half of the board
        Part(("box", (0.02, 0.22, 0.0), (0.02, 0.17, 0.36)), BLUE),  # back half
        Part(("box", (-0.045, 0.22, -0.06), (0.008, 0.035, 0.2)), WHITE),  # arrow shaft (front)
        Part(("box", (-0.045, 0.22, 0.18), (0.008, 0.09, 0.05)), WHITE),  # arrow head (front)
        Part(("box", (0.045, 0.22, 0.0), (0.008, 0.11, 0.04)), YELLOW),  # upright bar (back)
        Part(("box", (0.0, -0.56, 0.0), (0.16, 0.02, 0.16)), POST),
    ))


OBJECTS: dict[str, SuiteObject] = {o.name: o for o in (_chair(), _mug(), _sculpture(), _molecule(), _mushroom(), _signpost())}


# ---- rendering: the demo's field, with another object and background ----------------------------

class ObjectField(demo.SnowmanField):
    """``SnowmanField`` (coarse-grid skipping, soft density, baked diffuse shading) for any suite object."""

    def __init__(self, obj: SuiteObject, step_size: float, box_half: float = 0.66):
        self.obj = obj  # before super().__init__, which builds the coarse bound from sdf()
        super().__init__(step_size=step_size, box_half=box_half)

    def parts(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.obj.distances(points)

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        return self.parts(points)[0].min(dim=-1).values

    def features(self, points: torch.Tensor) -> torch.Tensor:
        # SnowmanField.features calls the module-level snowman_parts; this is its shading with our parts.
        distances, albedo = self.parts(points)
        nearest = distances.min(dim=-1)
        offsets = torch.eye(3, dtype=points.dtype) * 1e-3
        grad = torch.stack([self.sdf(points + offsets[i]) - nearest.values for i in range(3)], dim=-1)
        normal = grad / demo._length(grad)[:, None].clamp(min=1e-8)
        shade = 0.6 + 0.4 * (normal @ self.light).clamp(min=0.0)
        return (albedo[nearest.indices] * shade[:, None]).clamp(0.0, 1.0)

    def background(self, directions: torch.Tensor) -> torch.Tensor:
        return directions.new_tensor(self.obj.background).expand(directions.shape[0], 3).contiguous()


SUITE_DEFAULTS = replace(demo.DemoSpec(), train=100, test=20, subpixel=1, step_size=0.008)


def make_object(obj: SuiteObject, out: Path, spec: demo.DemoSpec = SUITE_DEFAULTS, log=None) -> Path:
    """Render one object's train and test splits (PNG + transforms_*.json) and a README."""
    torch.manual_seed(spec.seed)
    began = time.perf_counter()
    field_module = ObjectField(obj, spec.step_size)
    for split, poses in (("train", demo.train_poses(spec)), ("test", demo.test_poses(spec))):
        demo.write_split(out, split, demo.render_pictures(field_module, poses, spec), poses, spec.fov_deg)
    write_text(out / "README.md", f"# {obj.name}\n\n{obj.description}.\n\nBackground {list(obj.background)}; "
                                  f"{spec.train} train / {spec.test} test views, {spec.size}x{spec.size}, "
                                  f"made by `python scripts/make_object_suite.py` (seed {spec.seed}). "
                                  "y-up world, front = -x, NeRF-synthetic layout.\n")
    if log:
        log(f"{obj.name}: {spec.train}+{spec.test} views in {time.perf_counter() - began:.1f} s")
    return out


def make_suite(out: Path, names: Sequence[str] | None = None, spec: demo.DemoSpec = SUITE_DEFAULTS, log=None) -> list[Path]:
    names = list(names or OBJECTS)
    unknown = [n for n in names if n not in OBJECTS]
    if unknown:
        raise SystemExit(f"unknown object(s) {', '.join(unknown)}; known: {', '.join(OBJECTS)}")
    folders = [make_object(OBJECTS[n], out / n, spec, log) for n in names]
    write_text(out / "suite.json", json.dumps({
        "objects": {n: {"description": OBJECTS[n].description, "background": list(OBJECTS[n].background)} for n in names},
        "train": spec.train, "test": spec.test, "size": spec.size, "seed": spec.seed, "fov_deg": spec.fov_deg,
    }, indent=2) + "\n")
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "suite")
    parser.add_argument("--objects", nargs="+", default=None, help=f"subset of: {' '.join(OBJECTS)}")
    parser.add_argument("--views", type=int, default=SUITE_DEFAULTS.train, help="training views per object")
    parser.add_argument("--test", type=int, default=SUITE_DEFAULTS.test, help="held-out views per object")
    parser.add_argument("--size", type=int, default=SUITE_DEFAULTS.size)
    parser.add_argument("--seed", type=int, default=SUITE_DEFAULTS.seed)
    parser.add_argument("--subpixel", type=int, default=SUITE_DEFAULTS.subpixel)
    parser.add_argument("--step-size", type=float, default=SUITE_DEFAULTS.step_size)
    args = parser.parse_args(argv)
    spec = replace(SUITE_DEFAULTS, train=args.views, test=args.test, size=args.size, seed=args.seed,
                   subpixel=args.subpixel, step_size=args.step_size)
    make_suite(args.out, args.objects, spec, log=lambda line: print(line, file=sys.stderr))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
