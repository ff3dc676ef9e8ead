"""``sjc sample``: 2D images straight from a prior, with the Karras sampler or estimator ascent.

``--method karras`` runs the Karras sampler; ``--method NAME`` for any installed estimator
(``paas``, ``sds``, ``ism``, a third party's) optimises the images directly with that
estimator's gradient and schedule, the paper's 2D experiment. The prior comes from a recipe
(``--recipe R``: its [prior] table and its [estimator] or [paas] settings) or is named
directly (``--prior NAME``). ``--set`` takes the recipe's keys in both cases, so
``--set prior.images=imgs --set paas.schedule=annealed`` means the same thing either way.
The estimator's options come from the recipe's table when it names the same estimator
(``[paas]`` for paas), else from its defaults, then from ``--set estimator.KEY=VALUE``.
Writes DIR/sample_000.png ..., DIR/grid.png and DIR/samples.json (written last).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from sjc_core.commands.sample_setup import SAMPLER

if TYPE_CHECKING:
    from sjc_core.commands.sample_setup import Setup

NAME = "sample"
MAX_SAMPLE_STEPS = 10**5  # sampler steps: far beyond any useful schedule, and a bounded loop
DEFAULT_STEPS = {SAMPLER: 40}  # estimators: ASCENT_STEPS
ASCENT_STEPS = 500
MAX_IMAGES = 10_000  # every picture is held in memory until the grid is written
MAX_BATCH = 1024


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
    azimuth: float | None = None  # the camera's azimuth for view-dependent priors (Perp-Neg); None: no view


def command(
    recipe: Annotated[
        Optional[Path], typer.Option("--recipe", help="take the prior and the estimator settings from this recipe")
    ] = None,
    prior: Annotated[Optional[str], typer.Option("--prior", help="name of the prior plugin to sample from")] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set", help="override a value, recipe keys: prior.KEY=VALUE, estimator.KEY=VALUE or paas.KEY=VALUE (repeatable)"
        ),
    ] = None,
    method: Annotated[
        str, typer.Option(help="karras (Heun ODE sampler), or an estimator for 2D ascent: paas, sds, ism, ...")
    ] = "karras",
    n: Annotated[int, typer.Option("--n", help="number of images")] = 8,
    steps: Annotated[Optional[int], typer.Option(help="karras: noise levels (40); estimators: ascent steps (500)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed (default: the recipe's, else 0)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="folder that receives the images (default: runs/samples-NAME)")] = None,
    batch_size: Annotated[int, typer.Option(help="images denoised together")] = 8,
    sigma_min: Annotated[
        Optional[float],
        typer.Option(help="lowest sigma (karras: the ladder's bottom; estimators: their sigma_min option)"),
    ] = None,
    sigma_max: Annotated[
        Optional[float],
        typer.Option(help="highest sigma (karras: the ladder's top, at most 80; estimators: their sigma_max option)"),
    ] = None,
    rho: Annotated[float, typer.Option(help="karras: schedule curvature")] = 7.0,
    churn: Annotated[float, typer.Option(help="karras: S_churn, stochastic churn (0 = deterministic)")] = 0.0,
    churn_min: Annotated[float, typer.Option(help="karras: S_min, churn only at sigma >= this")] = 0.05,
    churn_max: Annotated[float, typer.Option(help="karras: S_max, churn only at sigma <= this")] = 50.0,
    churn_noise: Annotated[float, typer.Option(help="karras: S_noise, scale of the churn noise")] = 1.003,
    lr: Annotated[float, typer.Option(help="estimators: Adamax learning rate on the image")] = 0.05,
    azimuth: Annotated[
        Optional[float],
        typer.Option(help="sample as seen from this azimuth (0 front, 90 side, 180 back): the view prompt, and "
                     "Perp-Neg's mix with prior.perp_neg"),
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N (default: the recipe's, else auto)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace the samples already in --out")] = False,
) -> None:
    """Sample 2D images from a prior (Karras sampler or ascent with an estimator); writes PNGs and a grid."""
    from sjc_core.commands.common import device_problem, registry
    from sjc_core.errors import SjcError, did_you_mean, shorten
    from sjc_core.recipes.estimator_table import KIND, with_paas
    from sjc_core.recipes.values import MAX_SEED, MAX_SIGMA

    problems = []
    if (recipe is None) == (prior is None):
        problems.append("give either --recipe RECIPE or --prior NAME" + (" (not both)" if recipe and prior else ""))
    methods = (SAMPLER, *with_paas(registry()).names(KIND))
    if method not in methods:
        problems.append(
            f"--method: unknown method {shorten(method)}{did_you_mean(method, methods)} (known: {', '.join(methods)})"
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
        ("--azimuth", azimuth, azimuth is None or azimuth >= -360, ">= -360", azimuth is None or azimuth <= 360, "<= 360"),
        ("--sigma-min", sigma_min, sigma_min is None or sigma_min > 0, "> 0", sigma_min is None or sigma_min <= MAX_SIGMA,
         f"<= {MAX_SIGMA:g}"),
        ("--sigma-max", sigma_max, sigma_max is None or sigma_max > 0, "> 0", sigma_max is None or sigma_max <= MAX_SIGMA,
         f"<= {MAX_SIGMA:g}"),
    ]
    # NaN fails every comparison, so it is reported too; inf fails the upper bound.
    for flag, value, low_ok, low_rule, high_ok, high_rule in checks:
        if not (low_ok and high_ok):
            problems.append(f"{flag}: must be {low_rule if not low_ok else high_rule} (got {shorten(value)})")
    problem = device_problem(device) if device is not None else None
    if problem:
        problems.append(problem)
    if problems:
        raise SjcError(*problems)
    if out is None:  # under runs/ like every other command's output, never loose in the working folder
        out = Path("runs") / f"samples-{recipe.stem if recipe is not None else prior}"
    _check_out(out, overwrite)

    sets = set_ or []
    from sjc_core.commands.sample_setup import from_recipe, standalone

    setup = from_recipe(recipe, sets, registry(), method) if recipe else standalone(prior or "", sets, registry(), method)
    settings = SampleSettings(
        method=method, n=n, steps=steps or DEFAULT_STEPS.get(method, ASCENT_STEPS), seed=seed if seed is not None else (setup.seed or 0),
        batch_size=batch_size, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, churn=churn, churn_min=churn_min,
        churn_max=churn_max, churn_noise=churn_noise, lr=lr, azimuth=azimuth,
    )
    record = generate(setup, settings, out, device or setup.device, overwrite)
    typer.echo(f"wrote {record['n']} {method} samples to {out} (grid: {out / 'grid.png'})")


def _check_out(out: Path, overwrite: bool) -> None:
    from sjc_core.errors import SjcError
    from sjc_core.recipes.model import check_output_folder

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
    from sjc_core.contracts import BuildContext
    from sjc_core.devices import resolve_device
    from sjc_core.files import atomic
    from sjc_core.files import pictures as files_pictures

    device = resolve_device(device_setting)
    prior = setup.info.factory(setup.options, BuildContext(device=device, base_dir=setup.base_dir, seed=settings.seed))
    sigmas, method_record, estimator = plan_sigmas(prior, setup, settings, device)
    pictures = draw(prior, estimator, settings, sigmas, device)

    if overwrite:
        for stale in out.glob("sample_*.png"):
            stale.unlink()
    files = []
    for index, picture in enumerate(pictures):
        files.append(f"sample_{index:03d}.png")
        files_pictures.write_image(out / files[-1], picture)
    files_pictures.write_image(out / "grid.png", tile(pictures))
    record: dict[str, Any] = {
        "method": settings.method, "n": settings.n, "seed": settings.seed, "steps": settings.steps,
        "azimuth": settings.azimuth, settings.method: method_record, "sigmas": [float(s) for s in sigmas],
        "prior": setup.prior_table, "source": setup.source, "device": str(device),
        "files": files, "grid": "grid.png", "image_size": list(pictures[0].shape[:2]),
    }
    atomic.write_text(out / "samples.json", json.dumps(record, indent=2) + "\n")  # last: marks a complete folder
    return record


def plan_sigmas(prior: Any, setup: Setup, settings: SampleSettings, device: Any = None) -> tuple[Any, dict[str, Any], Any]:
    """The sigmas to visit, the method's settings as recorded in samples.json, and the estimator.

    karras: ``steps`` Karras levels on the prior's ladder, then 0 (no estimator). An
    estimator: its own schedule for ``steps`` ascent steps, drawn from the engine's schedule
    stream, with --sigma-min/--sigma-max set as its sigma_min/sigma_max options (the flags
    win). paas keeps its record: the [paas] settings with the sigma range it resolved.
    """
    import numpy as np

    from sjc_core.contracts import BuildContext
    from sjc_core.errors import SjcError
    from sjc_core.sampling import ladders
    from sjc_core.training.paas import default_sigma_range

    try:
        if settings.method == SAMPLER:
            sigmas = ladders.karras_schedule_for(prior, settings.steps, settings.sigma_min, settings.sigma_max, settings.rho)
            return sigmas, {
                "rho": settings.rho, "s_churn": settings.churn, "s_min": settings.churn_min,
                "s_max": settings.churn_max, "s_noise": settings.churn_noise,
            }, None
        choice = setup.estimator
        options = _with_sigma_flags(choice.options, settings)
        record = options.model_dump(mode="json")
        if choice.info.name == "paas":
            low, high = default_sigma_range(prior)
            low, high = options.sigma_min or low, options.sigma_max or high
            if low > high:
                raise ValueError(f"sigma_min {low} is above sigma_max {high}")
            record.update(sigma_min=low, sigma_max=high)
        elif getattr(options, "sigma_min", None) is not None and getattr(options, "sigma_max", None) is not None:
            if options.sigma_min > options.sigma_max:
                raise ValueError(f"sigma_min {options.sigma_min} is above sigma_max {options.sigma_max}")
        ctx = BuildContext(base_dir=setup.base_dir, seed=settings.seed, **({"device": device} if device is not None else {}))
        estimator = choice.info.factory(options, ctx)
        rng = np.random.default_rng([settings.seed, 1])  # the engine's stream for its schedule
        sigmas = estimator.schedule(prior, settings.steps, rng)
        return sigmas, {**record, "lr": settings.lr}, estimator
    except ValueError as exc:
        raise SjcError(f"sigma range: {exc}") from None


def _with_sigma_flags(options: Any, settings: SampleSettings) -> Any:
    """The estimator's options with --sigma-min/--sigma-max in its sigma_min/sigma_max."""
    from sjc_core.errors import SjcError

    update = {}
    for flag, key, value in (("--sigma-min", "sigma_min", settings.sigma_min), ("--sigma-max", "sigma_max", settings.sigma_max)):
        if value is not None:
            if key not in type(options).model_fields:
                raise SjcError(f"{flag}: the {settings.method} estimator has no {key} option")
            update[key] = value
    return options.model_copy(update=update) if update else options


def draw(prior: Any, estimator: Any, settings: SampleSettings, sigmas: Any, device: Any) -> list[Any]:
    """Sample ``n`` images in batches; returns uint8 pictures [H, W, 3] (the prior's to_rgb).

    Image i draws all its noise from its own generator seeded by (seed, i), so it does not
    depend on --batch-size or on the other images.
    """
    import torch

    from sjc_core.errors import SjcError
    from sjc_core.files import pictures as files_pictures
    from sjc_core.runs.progress import Progress
    from sjc_core.sampling import ladders, noise, samplers

    count = int(getattr(prior, "views_per_step", 1) or 1)  # a multi-view prior draws whole objects
    if count > 1:
        if settings.n % count:
            raise SjcError(f"--n: the prior draws the {count} views of each object together: give a multiple of {count}")
        cond = prior.condition_views(sample_views(settings.azimuth or 0.0, count))
    else:
        cond = prior.condition(sample_view(settings.azimuth))

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return prior.denoise(x, sigma, cond)

    n, size = settings.n, settings.batch_size if count == 1 else count * max(1, settings.batch_size // count)
    shape = (prior.channels, prior.resolution, prior.resolution)
    gens = noise.generators_for(settings.seed, n)
    batches = [range(start, min(start + size, n)) for start in range(0, n, size)]
    per_batch = len(sigmas) - 1 if settings.method == SAMPLER else len(sigmas)
    bar = Progress(per_batch * len(batches), label=f"{settings.method} ")
    pictures: list[Any] = [None] * n
    try:
        for number, rows in enumerate(batches):
            order = list(rows) if count == 1 else view_major(rows, count)  # image index of each batch row
            batch_gens = [gens[i] for i in order]

            def tick(done: int, total: int, sigma: float, x: torch.Tensor, offset: int = number * per_batch) -> None:
                bar.update(offset + done, f"images {rows.start + 1}-{rows.stop}/{n} sigma {sigma:.4g}")

            if settings.method == SAMPLER:
                start = noise.randn((len(rows), *shape), torch.zeros((), device=device), batch_gens) * float(sigmas[0])
                result = samplers.sample_heun(
                    denoise, start, sigmas, s_churn=settings.churn, s_min=settings.churn_min, s_max=settings.churn_max,
                    s_noise=settings.churn_noise, snap=ladders.ladder_snapper(prior.sigmas), generator=batch_gens,
                    callback=tick,
                )
            else:
                start = torch.zeros((len(rows), *shape), device=device)
                result = samplers.estimator_ascent(
                    estimator, prior, start, sigmas, cond, lr=settings.lr, generator=batch_gens, callback=tick
                )
            if not bool(torch.isfinite(result).all()):
                raise SjcError(
                    f"sample: images {rows.start}-{rows.stop - 1} became NaN or Inf (try a smaller sigma range or --lr)"
                )
            with torch.no_grad():
                for index, rgb in zip(order, prior.to_rgb(result).float().cpu()):
                    pictures[index] = files_pictures.to_uint8(rgb)
    finally:
        bar.close()
    return pictures

def sample_view(azimuth: float | None) -> Any:
    """The camera 2D samples are conditioned on: none, or one on the equator at ``azimuth``
    (its view label, and the azimuth itself for priors that weigh view prompts by angle)."""
    if azimuth is None:
        return None
    from sjc_core.contracts import View
    from sjc_core.render.cameras import view_label

    return View(label=view_label(azimuth, 90.0), azimuth_deg=azimuth % 360.0)


def view_major(rows: range, count: int) -> list[int]:
    """Image indices of a batch of whole objects (image i is view i % count of object i // count),
    in the row order a multi-view prior reads: view 0 of every object, then view 1, ..."""
    objects = len(rows) // count
    return [rows.start + k * count + v for v in range(count) for k in range(objects)]


def sample_views(azimuth: float, count: int, elevation: float = 15.0) -> list[Any]:
    """``count`` cameras 360/count degrees apart from ``azimuth`` at MVDream's sampling elevation
    (15 degrees), unit distance: the views a multi-view prior draws together."""
    import torch

    from sjc_core.contracts import View
    from sjc_core.render.cameras import eye_on_sphere, look_at, view_label

    polar_draw = 90.0 * (1.0 - math.sin(math.radians(elevation)))
    views = []
    for k in range(count):
        turned = (azimuth + 360.0 * k / count) % 360.0
        pose = look_at(eye_on_sphere(1.0, turned, polar_draw))
        views.append(View(label=view_label(turned, polar_draw), c2w=torch.from_numpy(pose), azimuth_deg=turned))
    return views


def tile(pictures: list[Any], pad: int = 2, min_tile: int = 128) -> Any:
    """uint8 pictures [H, W, 3] in a near-square grid on white, small ones enlarged (nearest)."""
    import numpy as np

    from sjc_core.files.pictures import upscale

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
