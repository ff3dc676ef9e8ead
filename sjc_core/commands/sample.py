"""``sjc sample``: 2D images straight from a prior, with the Karras sampler or PAAS ascent.

The prior comes from a recipe (``--recipe R``: its [prior] table and [paas] settings) or is
named directly (``--prior NAME``). ``--set`` takes the recipe's keys in both cases, so
``--set prior.images=imgs --set paas.schedule=annealed`` means the same thing either way.
Writes DIR/sample_000.png ..., DIR/grid.png and DIR/samples.json (written last).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

NAME = "sample"
MAX_SAMPLE_STEPS = 10**5  # sampler steps: far beyond any useful schedule, and a bounded loop
METHODS = ("karras", "paas")
DEFAULT_STEPS = {"karras": 40, "paas": 500}
MAX_IMAGES = 10_000  # every picture is held in memory until the grid is written
MAX_BATCH = 1024
STANDALONE_KEYS = ("prior", "paas")


@dataclass(frozen=True)
class SampleSettings:
    """The command's sampling choices after validation (see the option help for each)."""

    method: str
    n: int
    steps: int
    seed: int
    batch_size: int = 8
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float = 7.0
    churn: float = 0.0
    churn_min: float = 0.05
    churn_max: float = 50.0
    churn_noise: float = 1.003
    lr: float = 0.05


@dataclass
class Setup:
    """What to sample from: the prior's table, PAAS settings, and where relative paths start."""

    prior_table: dict[str, Any]
    info: Any  # PluginInfo
    options: Any  # the prior's validated options model
    paas: Any  # PaasConfig
    base_dir: Path
    seed: int | None
    device: str
    source: str


def command(
    recipe: Annotated[
        Optional[Path], typer.Option("--recipe", help="take the prior and the paas settings from this recipe")
    ] = None,
    prior: Annotated[Optional[str], typer.Option("--prior", help="name of the prior plugin to sample from")] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="override a value, recipe keys: prior.KEY=VALUE or paas.KEY=VALUE (repeatable)"),
    ] = None,
    method: Annotated[str, typer.Option(help="karras (Heun ODE sampler) or paas (2D PAAS ascent)")] = "karras",
    n: Annotated[int, typer.Option("--n", help="number of images")] = 8,
    steps: Annotated[Optional[int], typer.Option(help="karras: noise levels (40); paas: ascent steps (500)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed (default: the recipe's, else 0)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="folder that receives the images")] = None,
    batch_size: Annotated[int, typer.Option(help="images denoised together")] = 8,
    sigma_min: Annotated[
        Optional[float],
        typer.Option(help="lowest sigma (karras: the ladder's bottom; paas: paas.sigma_min or the prior's range)"),
    ] = None,
    sigma_max: Annotated[
        Optional[float],
        typer.Option(help="highest sigma (karras: the ladder's top, at most 80; paas: paas.sigma_max or the prior's range)"),
    ] = None,
    rho: Annotated[float, typer.Option(help="karras: schedule curvature")] = 7.0,
    churn: Annotated[float, typer.Option(help="karras: S_churn, stochastic churn (0 = deterministic)")] = 0.0,
    churn_min: Annotated[float, typer.Option(help="karras: S_min, churn only at sigma >= this")] = 0.05,
    churn_max: Annotated[float, typer.Option(help="karras: S_max, churn only at sigma <= this")] = 50.0,
    churn_noise: Annotated[float, typer.Option(help="karras: S_noise, scale of the churn noise")] = 1.003,
    lr: Annotated[float, typer.Option(help="paas: Adamax learning rate on the image")] = 0.05,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda (default: the recipe's, else auto)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace the samples already in --out")] = False,
) -> None:
    """Sample 2D images from a prior (Karras sampler or PAAS ascent); writes PNGs and a grid."""
    from sjc_core.commands.common import registry
    from sjc_core.errors import SjcError, did_you_mean
    from sjc_core.recipe import MAX_SEED, MAX_SIGMA, shorten

    problems = []
    if (recipe is None) == (prior is None):
        problems.append("give either --recipe RECIPE or --prior NAME" + (" (not both)" if recipe and prior else ""))
    if method not in METHODS:
        problems.append(
            f"--method: unknown method {shorten(method)}{did_you_mean(method, METHODS)} (known: {', '.join(METHODS)})"
        )
    checks = [  # (flag, value, lower bound holds, its rule, upper bound holds, its rule)
        ("--n", n, n >= 1, ">= 1", n <= MAX_IMAGES, f"<= {MAX_IMAGES}"),
        ("--batch-size", batch_size, batch_size >= 1, ">= 1", batch_size <= MAX_BATCH, f"<= {MAX_BATCH}"),
        ("--steps", steps, steps is None or steps >= 1, ">= 1", steps is None or steps <= MAX_SAMPLE_STEPS,
         f"<= {MAX_SAMPLE_STEPS}"),
        ("--seed", seed, seed is None or seed >= 0, ">= 0", seed is None or seed <= MAX_SEED, "< 2**63"),
        ("--rho", rho, rho > 0, "> 0", rho <= 1e3, "<= 1000"),
        ("--lr", lr, lr > 0, "> 0", lr <= 1e3, "<= 1000"),
        ("--churn", churn, churn >= 0, ">= 0", churn <= 1e6, "<= 1e6"),
        ("--churn-min", churn_min, churn_min >= 0, ">= 0", churn_min <= MAX_SIGMA, f"<= {MAX_SIGMA:g}"),
        ("--churn-max", churn_max, churn_max >= 0, ">= 0", churn_max <= MAX_SIGMA, f"<= {MAX_SIGMA:g}"),
        ("--churn-noise", churn_noise, churn_noise > 0, "> 0", churn_noise <= 1e3, "<= 1000"),
        ("--sigma-min", sigma_min, sigma_min is None or sigma_min > 0, "> 0", sigma_min is None or sigma_min <= MAX_SIGMA,
         f"<= {MAX_SIGMA:g}"),
        ("--sigma-max", sigma_max, sigma_max is None or sigma_max > 0, "> 0", sigma_max is None or sigma_max <= MAX_SIGMA,
         f"<= {MAX_SIGMA:g}"),
    ]
    # NaN fails every comparison, so it is reported too; inf fails the upper bound.
    for flag, value, low_ok, low_rule, high_ok, high_rule in checks:
        if not (low_ok and high_ok):
            problems.append(f"{flag}: must be {low_rule if not low_ok else high_rule} (got {shorten(value)})")
    if device is not None and device not in ("auto", "cpu", "cuda"):
        problems.append(f"--device: must be auto, cpu or cuda (got {shorten(device)})")
    if out is None:
        problems.append("--out: required: the folder that receives the images")
    if problems:
        raise SjcError(*problems)
    assert out is not None
    _check_out(out, overwrite)

    setup = _from_recipe(recipe, set_ or [], registry()) if recipe else _standalone(prior or "", set_ or [], registry())
    settings = SampleSettings(
        method=method, n=n, steps=steps or DEFAULT_STEPS[method], seed=seed if seed is not None else (setup.seed or 0),
        batch_size=batch_size, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, churn=churn, churn_min=churn_min,
        churn_max=churn_max, churn_noise=churn_noise, lr=lr,
    )
    record = generate(setup, settings, out, device or setup.device, overwrite)
    typer.echo(f"wrote {record['n']} {method} samples to {out} (grid: {out / 'grid.png'})")


# -- where the prior comes from -------------------------------------------------------------
def _from_recipe(path: Path, sets: list[str], reg: Any) -> Setup:
    from sjc_core.recipe import load_recipe

    loaded = load_recipe(path, reg, sets)
    _check_prior(loaded.prior.options, loaded.base_dir, str(path))
    return Setup(
        prior_table=loaded.prior.as_table(),
        info=loaded.prior.info,
        options=loaded.prior.options,
        paas=loaded.settings.paas,
        base_dir=loaded.base_dir,
        seed=loaded.settings.seed,
        device=loaded.settings.device,
        source=str(path),
    )


def _standalone(name: str, sets: list[str], reg: Any) -> Setup:
    """A prior named on the command line, with prior.* and paas.* overrides, fully validated."""
    from pydantic import ValidationError

    from sjc_core.errors import SjcError, did_you_mean
    from sjc_core.recipe import PaasConfig, apply_override, format_errors

    raw: dict[str, Any] = {"prior": {"name": name}}
    for assignment in sets:
        apply_override(raw, assignment)
    problems = []
    for key in raw:
        if key not in STANDALONE_KEYS:
            hint = did_you_mean(key, STANDALONE_KEYS)
            problems.append(f"{key}: unknown key{hint} (with --prior, --set takes prior.KEY=VALUE or paas.KEY=VALUE)")
    table = raw.get("prior")
    info = options = None
    if not isinstance(table, dict):
        problems.append("prior: expected a table; set its keys as prior.KEY=VALUE")
    else:
        try:
            info = reg.get("priors", str(table.get("name")), where="prior.name")
        except SjcError as exc:
            problems.extend(exc.problems)
        if info is not None:
            try:
                options = info.options.model_validate({k: v for k, v in table.items() if k != "name"})
            except ValidationError as exc:
                problems.extend(format_errors(exc, info.options, prefix="prior."))
    paas = None
    paas_table = raw.get("paas", {})
    if not isinstance(paas_table, dict):
        problems.append("paas: expected a table; set its keys as paas.KEY=VALUE")
    else:
        try:
            paas = PaasConfig.model_validate(paas_table)
        except ValidationError as exc:
            problems.extend(format_errors(exc, PaasConfig, prefix="paas."))
    if problems:
        raise SjcError(*problems)
    assert info is not None and options is not None and paas is not None
    _check_prior(options, Path.cwd(), None)
    return Setup(
        prior_table={"name": info.name, **options.model_dump(mode="json")},
        info=info,
        options=options,
        paas=paas,
        base_dir=Path.cwd(),
        seed=None,
        device="auto",
        source=f"--prior {info.name}",
    )


def _check_prior(options: Any, base_dir: Path, source: str | None) -> None:
    """What building the prior checks first (folders, extras, weights), before anything is drawn."""
    from sjc_core.contracts import BuildContext
    from sjc_core.errors import SjcError
    from sjc_core.recipe import preflight_problems

    problems = preflight_problems(options, BuildContext(base_dir=base_dir), "prior")
    if problems:
        raise SjcError(*(f"{source}: {problem}" if source else problem for problem in problems))


def _check_out(out: Path, overwrite: bool) -> None:
    from sjc_core.errors import SjcError
    from sjc_core.recipe import check_output_folder

    if out.exists() and not out.is_dir():
        raise SjcError(f"--out: {out} is a file, expected a folder")
    try:
        check_output_folder(str(out))
    except ValueError as exc:
        raise SjcError(f"--out: {out} {exc}") from None
    if (out / "samples.json").exists() and not overwrite:
        raise SjcError(f"--out: {out} already holds samples (samples.json); choose another folder or pass --overwrite")


# -- sampling and writing -------------------------------------------------------------------
def generate(setup: Setup, settings: SampleSettings, out: Path, device_setting: str, overwrite: bool) -> dict[str, Any]:
    """Build the prior, draw the images batch by batch, write PNGs, the grid and the record."""
    from sjc_core import artifacts
    from sjc_core.contracts import BuildContext

    from sjc_core.devices import resolve_device

    device = resolve_device(device_setting)
    prior = setup.info.factory(setup.options, BuildContext(device=device, base_dir=setup.base_dir, seed=settings.seed))
    sigmas, method_record = plan_sigmas(prior, setup, settings)
    pictures = draw(prior, setup, settings, sigmas, device)

    if overwrite:
        for stale in out.glob("sample_*.png"):
            stale.unlink()
    files = []
    for index, picture in enumerate(pictures):
        files.append(f"sample_{index:03d}.png")
        artifacts.write_image(out / files[-1], picture)
    artifacts.write_image(out / "grid.png", tile(pictures))
    record: dict[str, Any] = {
        "method": settings.method, "n": settings.n, "seed": settings.seed, "steps": settings.steps,
        settings.method: method_record, "sigmas": [float(s) for s in sigmas],
        "prior": setup.prior_table, "source": setup.source, "device": str(device),
        "files": files, "grid": "grid.png", "image_size": list(pictures[0].shape[:2]),
    }
    artifacts.write_text(out / "samples.json", json.dumps(record, indent=2) + "\n")  # last: marks a complete folder
    return record


def plan_sigmas(prior: Any, setup: Setup, settings: SampleSettings) -> tuple[Any, dict[str, Any]]:
    """The sigmas to visit and the method's settings as recorded in samples.json.

    karras: ``steps`` Karras levels on the prior's ladder, then 0. paas: the [paas] schedule
    (random or annealed) over the prior's default range unless paas.sigma_* or --sigma-*
    say otherwise (the flags win).
    """
    import numpy as np

    from sjc_core import sampling
    from sjc_core.errors import SjcError
    from sjc_core.paas import default_sigma_range, sigma_schedule

    try:
        if settings.method == "karras":
            sigmas = sampling.karras_schedule_for(prior, settings.steps, settings.sigma_min, settings.sigma_max, settings.rho)
            return sigmas, {
                "rho": settings.rho, "s_churn": settings.churn, "s_min": settings.churn_min,
                "s_max": settings.churn_max, "s_noise": settings.churn_noise,
            }
        paas = setup.paas
        low, high = default_sigma_range(prior)
        low = settings.sigma_min or paas.sigma_min or low
        high = settings.sigma_max or paas.sigma_max or high
        if low > high:
            raise ValueError(f"sigma_min {low} is above sigma_max {high}")
        rng = np.random.default_rng([settings.seed, 1])  # the engine's stream for its schedule
        sigmas = sigma_schedule(paas.schedule, prior.sigmas, settings.steps, rng, low, high)
        return sigmas, {**paas.model_dump(mode="json"), "sigma_min": low, "sigma_max": high, "lr": settings.lr}
    except ValueError as exc:
        raise SjcError(f"sigma range: {exc}") from None


def draw(prior: Any, setup: Setup, settings: SampleSettings, sigmas: Any, device: Any) -> list[Any]:
    """Sample ``n`` images in batches; returns uint8 pictures [H, W, 3] (the prior's to_rgb).

    Image i draws all its noise from its own generator seeded by (seed, i), so it does not
    depend on --batch-size or on the other images.
    """
    import torch

    from sjc_core import artifacts, sampling
    from sjc_core.errors import SjcError
    from sjc_core.progress import Progress

    cond = prior.condition(None)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return prior.denoise(x, sigma, cond)

    n, size = settings.n, settings.batch_size
    shape = (prior.channels, prior.resolution, prior.resolution)
    gens = sampling.generators_for(settings.seed, n)
    batches = [range(start, min(start + size, n)) for start in range(0, n, size)]
    per_batch = len(sigmas) - 1 if settings.method == "karras" else len(sigmas)
    bar = Progress(per_batch * len(batches), label=f"{settings.method} ")
    pictures = []
    try:
        for number, rows in enumerate(batches):
            batch_gens = [gens[i] for i in rows]

            def tick(done: int, total: int, sigma: float, x: torch.Tensor, offset: int = number * per_batch) -> None:
                bar.update(offset + done, f"images {rows.start + 1}-{rows.stop}/{n} sigma {sigma:.4g}")

            if settings.method == "karras":
                start = sampling.randn((len(rows), *shape), torch.zeros((), device=device), batch_gens) * float(sigmas[0])
                result = sampling.sample_heun(
                    denoise, start, sigmas, s_churn=settings.churn, s_min=settings.churn_min, s_max=settings.churn_max,
                    s_noise=settings.churn_noise, snap=sampling.ladder_snapper(prior.sigmas), generator=batch_gens,
                    callback=tick,
                )
            else:
                start = torch.zeros((len(rows), *shape), device=device)
                result = sampling.paas_ascent(
                    denoise, start, sigmas, lr=settings.lr, n_noise=setup.paas.n_noise, var_red=setup.paas.var_red,
                    generator=batch_gens, callback=tick,
                )
            if not bool(torch.isfinite(result).all()):
                raise SjcError(
                    f"sample: images {rows.start}-{rows.stop - 1} became NaN or Inf (try a smaller sigma range or --lr)"
                )
            with torch.no_grad():
                pictures.extend(artifacts.to_uint8(rgb) for rgb in prior.to_rgb(result).float().cpu())
    finally:
        bar.close()
    return pictures

def tile(pictures: list[Any], pad: int = 2, min_tile: int = 128) -> Any:
    """uint8 pictures [H, W, 3] in a near-square grid on white, small ones enlarged (nearest)."""
    import numpy as np

    from sjc_core.artifacts import upscale

    height, width = pictures[0].shape[:2]
    factor = max(1, min_tile // max(height, width))
    cells = [upscale(p, factor) for p in pictures]
    h, w = cells[0].shape[:2]
    cols = math.ceil(math.sqrt(len(cells)))
    rows = math.ceil(len(cells) / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for index, cell in enumerate(cells):
        r, c = divmod(index, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = cell
    return grid
