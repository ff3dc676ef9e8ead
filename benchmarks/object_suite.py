"""Measure fit and SJC on the object suite: held-out PSNR per object, with two baselines.

    python benchmarks/object_suite.py                       # every object, full settings (long!)
    python benchmarks/object_suite.py --objects mug --fit-steps 20 --sjc-steps 10 20   # a smoke run
    python benchmarks/object_suite.py --field gaussians --fit-steps   # SJC on splats (recipes/demo-gaussians.toml)

For each object of ``data/suite`` (made first by ``scripts/make_object_suite.py`` when
missing, or into ``--suite``; the objects of ``scripts/make_independent_suite.py``, drawn by a
renderer that is not sjc's, with ``--suite data/independent --objects vase lamp rock toy``):

- **fit**: ``sjc fit`` through its Python API (:func:`sjc_core.fit.fitting.fit_posed_images`), once
  per ``--fit-steps`` value (the learning rate decays over the whole run, so each step
  count is its own run). ``final`` is the held-out PSNR of the longest fit at its end,
  ``best`` the best held-out PSNR seen during any of them (``sjc fit`` scores the held-out
  views every 250 steps): a fit that declines with training shows best > final.
- **SJC**: the demo recipe (``recipes/demo.toml``) with ``prior.images`` pointed at the
  object's folder, ``steps`` = the largest ``--sjc-steps``, loaded by
  :func:`sjc_core.recipes.recipe.load_recipe`; one run, stepped by the same
  :class:`sjc_core.training.trainer.Trainer` that :func:`sjc_core.runs.engine.run` drives, and its field
  is evaluated when it reaches each requested step (so "SJC at 500" is step 500 of the
  2000-step run, with that run's noise schedule, not a separate 500-step run).
- baselines on the same held-out views: the mean training picture, and the training
  picture whose camera is nearest (by camera position) to each held-out camera.

Every PSNR is over the pooled squared error of all held-out views (as ``sjc fit``
reports it), pictures in [0, 1]. Prints the table on stdout, then a line ``JSON:`` and
one JSON object with every figure; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def psnr_pooled(errors: list[float]) -> float:
    mse = float(np.mean(errors))
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def baselines(train, test) -> dict[str, float]:
    """Mean-picture and nearest-training-camera baselines on the held-out views."""
    mean_picture = train.images.mean(axis=0)
    mean_err = [float(np.mean((mean_picture - image) ** 2)) for image in test.images]
    train_eyes = train.c2w[:, :3, 3]
    near_err = []
    for image, pose in zip(test.images, test.c2w):
        nearest = int(np.argmin(np.linalg.norm(train_eyes - pose[:3, 3], axis=1)))
        near_err.append(float(np.mean((train.images[nearest] - image) ** 2)))
    return {"mean_picture_db": round(psnr_pooled(mean_err), 3), "nearest_view_db": round(psnr_pooled(near_err), 3)}


@torch.no_grad()
def sjc_heldout_psnr(parts, test) -> float:
    from sjc_core.render.cameras import intrinsics
    from sjc_core.render.view import render_view

    k = intrinsics(test.fov_deg, test.height, test.width)
    errors = []
    for image, pose in zip(test.images, test.c2w):
        render = render_view(parts.field, k, pose, test.height, test.width, keep_weights=False)
        rgb = parts.prior.to_rgb(render.image[None])[0].permute(1, 2, 0).float().cpu().numpy()
        errors.append(float(np.mean((rgb - image) ** 2)))
    return psnr_pooled(errors)


FIELD_RECIPES = {
    "voxel": ROOT / "recipes" / "demo.toml",
    "gaussians": ROOT / "recipes" / "demo-gaussians.toml",
    "hashgrid": ROOT / "recipes" / "demo-hashgrid.toml",
}


def fit_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``--fit-set KEY=VALUE`` pairs as FitSettings fields (numbers as numbers)."""
    from dataclasses import fields

    from sjc_core.fit.settings import FitSettings

    known = {f.name for f in fields(FitSettings)}
    found: dict[str, Any] = {}
    for pair in pairs or []:
        key, _, text = pair.partition("=")
        if key not in known:
            raise SystemExit(f"--fit-set: unknown FitSettings field {key!r}")
        found[key] = json.loads(text) if text and text[0] in "-0123456789[{tf" else text
    return found


def run_fit(data: Path, out: Path, steps: int, log, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    from sjc_core.commands.common import registry
    from sjc_core.fit.fitting import fit_posed_images
    from sjc_core.fit.settings import FitSettings

    settings = FitSettings(**{"steps": steps, "video_frames": 0, "device": "cpu", **(overrides or {})})
    began = time.perf_counter()
    result = fit_posed_images(data, out, settings, registry(), log=log, overwrite=True)
    final = round(float(result.metrics["psnr_heldout"]), 3)
    best = max(final, float(result.metrics.get("psnr_heldout_best", final)))
    return {"steps": steps, "psnr_db": final, "best_db": round(best, 3),
            "best_step": result.metrics.get("psnr_heldout_best_step", steps) if best > final else steps,
            "curve": result.metrics.get("psnr_heldout_curve", []), "seconds": round(time.perf_counter() - began, 1),
            "free_space_opacity": result.metrics.get("heldout_free_space_opacity")}


def run_sjc(data: Path, checkpoints: list[int], test, recipe_path: Path, overrides: list[str], log) -> dict[str, Any]:
    from sjc_core.commands.common import registry
    from sjc_core.devices import resolve_device
    from sjc_core.recipes.recipe import load_recipe
    from sjc_core.training.trainer import Trainer, build_components

    steps = max(checkpoints)
    recipe = load_recipe(recipe_path, registry(), overrides=[
        f"prior.images={json.dumps(str(data.resolve()))}", f"steps={steps}", 'device="cpu"', *overrides,
    ])
    began = time.perf_counter()
    parts = build_components(recipe, resolve_device(recipe.settings.device))
    trainer = Trainer.create(recipe, parts)
    at: dict[str, float] = {}
    pending = []
    while trainer.step < steps:
        pending.append(trainer.train_step())
        if trainer.step in checkpoints:
            Trainer.fetch(pending)  # raises on NaN/Inf, like sjc run
            pending.clear()
            at[str(trainer.step)] = round(sjc_heldout_psnr(parts, test), 3)
            log(f"  sjc step {trainer.step}: held-out {at[str(trainer.step)]:.2f} dB")
    return {"steps": steps, "psnr_db_at": at, "seconds": round(time.perf_counter() - began, 1)}


def measure(name: str, data: Path, scratch: Path, args, log) -> dict[str, Any]:
    from sjc_core.fit.datasets import load_posed_images

    train = load_posed_images(data, "train")
    test = load_posed_images(data, "test")
    row: dict[str, Any] = {"object": name, "train_views": len(train), "test_views": len(test)}
    row["baseline"] = baselines(train, test)
    fits = []
    for steps in args.fit_steps:
        log(f"{name}: fit {steps} steps")
        fits.append(run_fit(data, scratch / name / f"fit-{steps}", steps, log=lambda line: None,
                            overrides=fit_overrides(args.fit_set)))
    if fits:
        best = max(fits, key=lambda f: f["best_db"])
        row["fit"] = {"runs": fits, "best_db": best["best_db"], "best_steps": best["best_step"],
                      "final_db": fits[-1]["psnr_db"], "final_steps": fits[-1]["steps"],
                      "free_space_opacity": fits[-1]["free_space_opacity"]}
    if args.sjc_steps:
        log(f"{name}: sjc {max(args.sjc_steps)} steps")
        row["sjc"] = run_sjc(data, args.sjc_steps, test, args.recipe, args.set or [], log)
    return row


def table(rows: list[dict[str, Any]], sjc_steps: list[int]) -> str:
    head = ["object", "fit best", "fit final", *[f"sjc@{s}" for s in sjc_steps], "mean pic", "nearest"]
    lines = []
    for row in rows:
        sjc = row.get("sjc", {}).get("psnr_db_at", {})
        lines.append([
            row["object"], *(f"{row['fit'][key]:.2f}" if "fit" in row else "-" for key in ("best_db", "final_db")),
            *[f"{sjc[str(s)]:.2f}" if str(s) in sjc else "-" for s in sjc_steps],
            f"{row['baseline']['mean_picture_db']:.2f}", f"{row['baseline']['nearest_view_db']:.2f}",
        ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)]) + "\n(held-out PSNR, dB)"


def ensure_suite(suite: Path, names: list[str], log) -> None:
    """Make the objects of ``names`` that ``suite`` lacks: sjc-drawn ones with
    ``scripts/make_object_suite.py``, independently drawn ones with ``scripts/make_independent_suite.py``."""
    import make_independent_suite
    from make_object_suite import make_suite

    missing = [n for n in names if not (suite / n / "transforms_test.json").exists()]
    if missing:
        log(f"making {', '.join(missing)} in {suite}")
        own = [n for n in missing if n not in make_independent_suite.OBJECTS]
        if own:
            make_suite(suite, own, log=log)
        for name in missing:
            if name in make_independent_suite.OBJECTS:
                make_independent_suite.make_object(make_independent_suite.OBJECTS[name], suite / name)


def emit(text: str, report: dict[str, Any], json_path: Path | None) -> None:
    """Print the table, then a line ``JSON:`` and the report; also write it to ``json_path``."""
    print(text)
    print("JSON:")
    print(json.dumps(report, indent=2))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    from make_independent_suite import OBJECTS as INDEPENDENT
    from make_object_suite import OBJECTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=ROOT / "data" / "suite", help="the suite's folder (made when missing)")
    parser.add_argument("--objects", nargs="+", default=list(OBJECTS), choices=[*OBJECTS, *INDEPENDENT],
                        help=f"sjc-drawn: {' '.join(OBJECTS)}; independently drawn: {' '.join(INDEPENDENT)}")
    parser.add_argument("--fit-steps", nargs="*", type=int, default=[2000], help="one fit per value; best (during training) and final (longest) reported (none: no fit)")
    parser.add_argument("--fit-set", action="append", help="FitSettings override KEY=VALUE for the fits, e.g. distortion=0.01 (repeatable)")
    parser.add_argument("--sjc-steps", nargs="*", type=int, default=[500, 1000, 2000], help="SJC held-out PSNR at these steps of one run")
    parser.add_argument("--field", choices=sorted(FIELD_RECIPES), default="voxel",
                        help="the field of the SJC runs: picks the default --recipe (voxel: demo.toml, gaussians: demo-gaussians.toml, hashgrid: demo-hashgrid.toml)")
    parser.add_argument("--recipe", type=Path, default=None, help="the SJC recipe (default: the --field's demo recipe)")
    parser.add_argument("--set", action="append", help="recipe override KEY=VALUE for the SJC runs (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="scratch folder for the runs (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if any(s <= 0 for s in [*args.fit_steps, *args.sjc_steps]):
        parser.error("step counts must be positive")
    args.recipe = args.recipe or FIELD_RECIPES[args.field]
    args.fit_steps = sorted(set(args.fit_steps))
    args.sjc_steps = sorted(set(args.sjc_steps))
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda line: print(line, file=sys.stderr, flush=True)

    ensure_suite(args.suite, args.objects, log)

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sjc-suite-") as tmp:
        scratch = args.out or Path(tmp)
        rows = [measure(n, args.suite / n, scratch, args, log) for n in args.objects]
    report = {
        "suite": str(args.suite), "field": args.field, "fit_set": args.fit_set or [], "recipe": str(args.recipe), "fit_steps": args.fit_steps, "sjc_steps": args.sjc_steps,
        "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - began, 1), "objects": rows,
    }
    emit(table(rows, args.sjc_steps), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
