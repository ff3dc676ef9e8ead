"""``sjc batch``: run recipes x seeds x sweeps as Ray tasks (or in-process), with a gallery."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "batch"
MAX_RESOURCES = 1e6  # GPUs or CPUs one run may reserve


def command(
    recipes: Annotated[list[Path], typer.Argument(help="TOML recipes")],
    seeds: Annotated[
        Optional[str], typer.Option(help="seeds for every recipe: 0,1,2 or 0-7 or 0-3,8 (default: the recipe's seed)")
    ] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="override a value in every run: KEY=VALUE (repeatable)")
    ] = None,
    sweep: Annotated[
        Optional[list[str]],
        typer.Option(help="one run per value: KEY=V1,V2,... (repeatable; several give every combination)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="batch folder: run folders, logs/, batch.json, index.html")] = Path(
        "runs/batch"
    ),
    address: Annotated[
        Optional[str], typer.Option(help="join this Ray cluster ('auto', HOST:PORT or ray://HOST:10001)")
    ] = None,
    gpus_per_run: Annotated[
        Optional[float], typer.Option(help="GPUs per run (default: 1 when the cluster has GPUs, else 0)")
    ] = None,
    cpus_per_run: Annotated[float, typer.Option(help="CPUs reserved per run")] = 1.0,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="run one after another in this process, even with Ray")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the planned runs and their folders, run nothing")] = False,
) -> None:
    """Run many recipes, seeds and sweeps at once; skips finished runs, resumes interrupted ones."""
    from sjc_core.batch import plan, runner
    from sjc_core.commands.common import registry
    from sjc_core.errors import SjcError

    if no_ray and address:
        raise SjcError("--no-ray and --address: choose one")
    if not (gpus_per_run is None or 0 <= gpus_per_run <= MAX_RESOURCES) or not 0 < cpus_per_run <= MAX_RESOURCES:
        # NaN fails every comparison, inf the upper bound
        raise SjcError(f"--gpus-per-run must be >= 0 and --cpus-per-run > 0, both finite and at most {MAX_RESOURCES:g}")
    if address and not runner.ray_available():
        raise SjcError(f"--address {address}: Ray is not installed; pip install -e '.[ray]'")
    out = out.expanduser().resolve()
    jobs = plan.plan(
        recipes,
        registry(),
        out,
        seeds=plan.parse_seeds(seeds) if seeds is not None else None,
        sets=set_ or [],
        sweeps=sweep or [],
    )
    if dry_run:
        for job in jobs:
            problem = f"  error: {job.error}" if job.error else ""
            typer.echo(f"{out / job.key}  {job.recipe} seed {job.seed} {' '.join(job.overrides)}".rstrip() + problem)
        return
    options = runner.BatchOptions(
        out=out,
        address=address,
        use_ray=not no_ray,
        gpus_per_run=gpus_per_run,
        cpus_per_run=cpus_per_run,
        meta={"command": ["sjc", *sys.argv[1:]]},
    )
    try:
        document = runner.run_batch(jobs, options)
    except KeyboardInterrupt:
        typer.echo(f"stopped; batch.json and index.html are in {out}", err=True)
        raise typer.Exit(130) from None
    typer.echo(runner.summary_table(document))
    typer.echo(f"gallery: {out / 'index.html'}")
    if document["counts"]["failed"]:
        raise typer.Exit(1)
