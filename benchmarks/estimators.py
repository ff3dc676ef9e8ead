"""Compare score estimators (paas, sds, ism, ...) with the empirical prior on the object suite.

    python benchmarks/estimators.py                                   # every object, 2000 steps (long!)
    python benchmarks/estimators.py --objects mug --steps 300 --threads 2   # a small run
    python benchmarks/estimators.py --estimators paas sds "ism:inversion_condition=view"

For each object of ``data/suite`` (made first by ``scripts/make_object_suite.py`` when
missing; ``demo`` names ``data/demo``) and each estimator, the demo recipe
(``recipes/demo.toml``) runs with its ``[paas]`` table replaced by ``[estimator] name = ...``
(options after a colon, ``KEY=VALUE`` joined by commas, TOML values), through
:func:`benchmarks.object_suite.run_sjc`: the same loading, trainer and held-out scoring as
the suite benchmark, which this module imports rather than repeats.

- **equal steps**: every estimator runs ``--steps`` steps; held-out PSNR at the end.
- **equal wall time**: the first estimator's time for those steps is the budget; each other
  estimator runs ``round(steps * budget / its own time)`` steps (its own schedule over that
  many steps), so a costlier estimator (ISM's inversion costs several denoiser calls a step)
  gets fewer.

Seconds per step are each run's wall time over its steps, on this machine with
``--threads`` torch threads, after one untimed 2-step run (compiled kernels, caches); they
include building the prior and scoring the held-out views (the same for every estimator). Prints the table on stdout, then a line ``JSON:`` and
one JSON object with every figure; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from object_suite import baselines, emit, ensure_suite, run_sjc  # noqa: E402 (the suite benchmark's own scoring)

DEFAULT_ESTIMATORS = ["paas", "sds", "ism"]


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value,key=value`` (values in TOML: ``t_range=[0.1, 0.9]`` needs quoting)."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for part in filter(None, _split_top_level(rest)):
        key, sep, text = part.partition("=")
        if not sep:
            raise ValueError(f"{spec}: expected KEY=VALUE after the colon, got {part!r}")
        options[key.strip()] = tomllib.loads(f"v = {text.strip()}")["v"]
    return name, options


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets (so ``t_range=[0.1, 0.5]`` stays whole)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def estimator_recipe(base: Path, name: str, options: dict[str, Any], path: Path) -> Path:
    """The base recipe with [paas] replaced by this estimator's table, written to ``path``."""
    from sjc_core.recipes import toml_out
    from sjc_core.recipes.recipe import read_toml

    raw = read_toml(base)
    raw.pop("paas", None)
    raw["estimator"] = {"name": name, **options}
    path.write_text(toml_out.dumps(raw))
    return path


def measure(name: str, data: Path, scratch: Path, args: argparse.Namespace, log) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from sjc_core.fit.datasets import load_posed_images

    train = load_posed_images(data, "train")
    test = load_posed_images(data, "test")
    row: dict[str, Any] = {"object": name, "baseline": baselines(train, test), "estimators": []}
    runs = []
    if not args.warmed_up:  # compile kernels and fill caches before anything is timed
        first, options = parse_spec(args.estimators[0])
        run_sjc(data, [2], test, estimator_recipe(args.recipe, first, options, scratch / "warm-up.toml"), args.set or [],
                lambda line: None)
        args.warmed_up = True
    for index, spec in enumerate(args.estimators):
        estimator, options = parse_spec(spec)
        recipe = estimator_recipe(args.recipe, estimator, options, scratch / f"{name}-estimator-{index}.toml")
        log(f"{name}: {spec}, {args.steps} steps")
        runs.append((spec, recipe, timed_run(data, args.steps, test, recipe, args, log)))
    budget = runs[0][2]["seconds"]
    for spec, recipe, result in runs:
        per_step = result["seconds"] / args.steps
        entry = {"estimator": spec, "seconds_per_step": round(per_step, 4), "equal_steps": result}
        steps = max(1, round(budget / per_step))
        if steps == args.steps:
            entry["equal_time"] = dict(result)
        else:
            log(f"{name}: {spec}, {steps} steps (equal wall time: {budget:.1f} s)")
            entry["equal_time"] = timed_run(data, steps, test, recipe, args, log)
        row["estimators"].append(entry)
    return row


def timed_run(data: Path, steps: int, test: Any, recipe: Path, args: argparse.Namespace, log) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """One SJC run of ``steps`` steps: its held-out PSNR at the end and its wall time."""
    began = time.perf_counter()
    result = run_sjc(data, [steps], test, recipe, args.set or [], log)
    seconds = time.perf_counter() - began
    return {"steps": steps, "psnr_db": result["psnr_db_at"][str(steps)], "seconds": round(seconds, 3)}


def table(rows: list[dict[str, Any]], steps: int) -> str:
    head = ["object", "estimator", "s/step", f"PSNR@{steps} steps", "steps@equal time", "PSNR@equal time", "mean pic", "nearest"]
    lines = []
    for row in rows:
        for entry in row["estimators"]:
            lines.append([
                row["object"], entry["estimator"], f"{entry['seconds_per_step']:.3f}",
                f"{entry['equal_steps']['psnr_db']:.2f}", str(entry["equal_time"]["steps"]),
                f"{entry['equal_time']['psnr_db']:.2f}",
                f"{row['baseline']['mean_picture_db']:.2f}", f"{row['baseline']['nearest_view_db']:.2f}",
            ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)]) + "\n(held-out PSNR, dB)"


def main(argv: list[str] | None = None) -> int:
    from make_object_suite import OBJECTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=ROOT / "data" / "suite", help="the suite's folder (made when missing)")
    parser.add_argument("--objects", nargs="+", default=list(OBJECTS), choices=[*OBJECTS, "demo"])
    parser.add_argument("--estimators", nargs="+", default=DEFAULT_ESTIMATORS,
                        help="NAME or NAME:KEY=VALUE,... (the first one sets the wall-time budget)")
    parser.add_argument("--steps", type=int, default=2000, help="steps of the equal-steps runs")
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "demo.toml")
    parser.add_argument("--set", action="append", help="recipe override KEY=VALUE for every run (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    args.warmed_up = False
    if args.steps <= 0:
        parser.error("--steps must be positive")
    try:
        [parse_spec(spec) for spec in args.estimators]
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        parser.error(f"--estimators: {exc}")
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda line: print(line, file=sys.stderr, flush=True)

    folders = {name: ROOT / "data" / "demo" if name == "demo" else args.suite / name for name in args.objects}
    ensure_suite(args.suite, [n for n in folders if n != "demo"], log)

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sjc-estimators-") as tmp:
        rows = [measure(name, folder, Path(tmp), args, log) for name, folder in folders.items()]
    report = {
        "suite": str(args.suite), "recipe": str(args.recipe), "steps": args.steps, "estimators": args.estimators,
        "set": args.set or [], "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - began, 1),
        "objects": rows,
    }
    emit(table(rows, args.steps), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
