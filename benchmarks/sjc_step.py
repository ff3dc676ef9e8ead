"""Time one SJC step at a recipe's settings, split into render, prior, backward, optimizer.

Usage: python benchmarks/sjc_step.py [--recipe recipes/demo.toml] [--steps 30] [--threads 1]
Prints one JSON object with medians (seconds) per phase and in total.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "demo.toml"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from sjc_core.plugins import load_registry
    from sjc_core.recipes.recipe import load_recipe
    from sjc_core.runs import engine

    recipe = load_recipe(args.recipe, load_registry(), args.overrides)
    parts = engine.build_components(recipe, torch.device("cpu"))
    trainer = engine.Trainer.create(recipe, parts)
    phases: dict[str, list[float]] = {"render": [], "prior": [], "backward": [], "optimizer": []}
    totals = []
    for index in range(args.warmup + args.steps):
        result = trainer.train_step()
        if index >= args.warmup:
            for name, seconds in result.seconds.items():
                phases[name].append(seconds)
            totals.append(sum(result.seconds.values()))
    report = {
        "recipe": str(Path(args.recipe).name),
        "overrides": args.overrides,
        "threads": args.threads,
        "steps_timed": args.steps,
        "median_seconds": {name: round(statistics.median(v), 4) for name, v in phases.items()},
        "median_step_seconds": round(statistics.median(totals), 4),
        "min_step_seconds": round(min(totals), 4),
        "max_step_seconds": round(max(totals), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
