"""The 2D tools: Karras schedule and sampler, 2D PAAS ascent, and ``sjc sample``.

The empirical prior is the exact optimal denoiser of its images, so a correct sampler
run to sigma ~ 0 must return one of those images (it memorises its data). On a Gaussian
data set the optimal denoiser and the probability-flow ODE are both closed form, which
checks the integrator itself (Heun is second order, the last step is Euler).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from sjc_core.commands.common import registry
from sjc_core.contracts import BuildContext
from sjc_core.sampling import ladders, noise, samplers
from sjc_core.training.paas import default_sigma_range, paas_gradient, sigma_schedule

try:
    from conftest import run_sjc_command, write_sample_images
    from tiny_models import PIXEL_SIZE, SD_LATENT_SIZE
except ImportError:  # tests/ imported as a package
    from tests.conftest import run_sjc_command, write_sample_images
    from tests.tiny_models import PIXEL_SIZE, SD_LATENT_SIZE

SIZE = 16
COUNT = 5


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """One torch thread: these models are tiny, and on a shared 2-core machine a second
    thread makes each call many times slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five distinct 16x16 PNGs of uniform noise: pairwise per-pixel RMSE about 0.8 in [-1, 1]."""
    return write_sample_images(tmp_path_factory.mktemp("sampling") / "images", count=COUNT, size=SIZE)


@pytest.fixture(scope="module")
def prior(image_folder: Path):  # type: ignore[no-untyped-def]
    info = registry().get("priors", "empirical")
    options = info.options.model_validate({"images": str(image_folder), "resolution": SIZE})
    return info.factory(options, BuildContext())


def training_set(folder: Path) -> torch.Tensor:
    """The training PNGs as the prior sees them: [N, 3, H, W] in [-1, 1]."""
    pictures = [read_png(p) for p in sorted(folder.glob("*.png"))]
    return torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0


def read_png(path: Path) -> np.ndarray:
    return np.asarray(iio.imread(path))[..., :3]


def nearest(samples: torch.Tensor, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel RMSE of each sample to its nearest training image, and that image's index."""
    rmse = ((samples[:, None] - data[None]) ** 2).mean(dim=(2, 3, 4)).sqrt()
    return rmse.min(dim=1).values, rmse.argmin(dim=1)


def memorisation_threshold(data: torch.Tensor) -> float:
    """2% of the smallest RMSE between two distinct training images (about 0.016 here).

    Every output of the optimal denoiser is a convex combination of training images, so a
    sample whose weight on its nearest image is w lies about (1 - w) * distance from it:
    below the threshold means more than 98% of the mass sits on one image. A sampler that
    stopped early (the mean image at large sigma sits ~0.4 from each image) or left any
    noise of its last sigma in the picture misses it by an order of magnitude.
    """
    pair = ((data[:, None] - data[None]) ** 2).mean(dim=(2, 3, 4)).sqrt()
    off_diagonal = pair[~torch.eye(len(data), dtype=torch.bool)]
    return 0.02 * float(off_diagonal.min())


# -- schedules --------------------------------------------------------------------------------
def test_karras_sigmas_match_the_closed_form() -> None:
    n, low, high, rho = 12, 0.002, 80.0, 7.0
    sigmas = ladders.karras_sigmas(n, low, high, rho)
    expected = [(high ** (1 / rho) + i / (n - 1) * (low ** (1 / rho) - high ** (1 / rho))) ** rho for i in range(n)]
    assert sigmas.shape == (n + 1,)
    np.testing.assert_allclose(sigmas[:-1], expected, rtol=1e-12)
    assert sigmas[0] == pytest.approx(high) and sigmas[n - 1] == pytest.approx(low) and sigmas[-1] == 0.0
    assert np.all(np.diff(sigmas) < 0)
    # rho = 1 is a straight line in sigma; larger rho crowds the steps toward sigma_min.
    np.testing.assert_allclose(ladders.karras_sigmas(5, 1.0, 5.0, rho=1.0), [5, 4, 3, 2, 1, 0])
    assert ladders.karras_sigmas(1, 0.1, 3.0).tolist() == [3.0, 0.0]
    with pytest.raises(ValueError):
        ladders.karras_sigmas(0, 0.1, 1.0)


def test_snap_to_ladder_picks_the_nearest_level_in_log_and_keeps_zero() -> None:
    ladder = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    snapped = ladders.snap_to_ladder([20.0, 3.0, 3.2, 0.5, 0.01, 0.0], ladder)
    # 3.0 is below sqrt(1 * 10) = 3.16 so it snaps to 1, 3.2 to 10; log-nearest, not linear.
    assert snapped.tolist() == [10.0, 1.0, 10.0, 1.0, 0.1, 0.0]
    assert ladders.drop_repeats(np.array([10.0, 10.0, 1.0, 1.0, 0.0])).tolist() == [10.0, 1.0, 0.0]


def test_karras_schedule_for_a_prior_lies_on_its_ladder(prior) -> None:  # type: ignore[no-untyped-def]
    sigmas = ladders.karras_schedule_for(prior, 40)
    ladder = prior.sigmas.double().numpy()
    assert sigmas[-1] == 0.0
    assert all(np.isclose(ladder, s, rtol=0, atol=0).any() for s in sigmas[:-1])
    assert sigmas[0] == pytest.approx(min(80.0, ladder.max())) and sigmas[-2] == pytest.approx(ladder.min())
    assert np.all(np.diff(sigmas) < 0)


# -- the integrator on Gaussian data (closed form) ---------------------------------------------
MU, S = 0.3, 0.5


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Optimal denoiser of data ~ N(MU, S^2 I): shrink toward the mean."""
    return MU + (S**2 / (S**2 + sigma**2)) * (x - MU)


def exact_flow(x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """The probability-flow ODE dx/dsigma = (x - D) / sigma for that data: a linear map."""
    return MU + math.sqrt((S**2 + sigma_to**2) / (S**2 + sigma_from**2)) * (x - MU)


def test_heun_solves_the_flow_ode_to_second_order() -> None:
    x = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20.0
    errors = {}
    for n in (20, 40, 80):
        levels = ladders.karras_sigmas(n, 0.02, 20.0)[:-1]  # stop at sigma_min: no Euler step
        heun = samplers.sample_heun(gaussian_denoiser, x, levels)
        errors[n] = float((heun - exact_flow(x, 20.0, 0.02)).abs().max())
        euler_only = x.clone()
        for a, b in zip(levels[:-1], levels[1:]):
            euler_only = euler_only + (euler_only - gaussian_denoiser(euler_only, torch.tensor(a))) / a * (b - a)
        assert errors[n] < 0.2 * float((euler_only - exact_flow(x, 20.0, 0.02)).abs().max())
    # Halving the step size cuts a second-order method's error by about 4 (Euler's by 2).
    assert 3.5 < errors[20] / errors[40] < 5.0 and 3.5 < errors[40] / errors[80] < 5.0
    # Down to 0 the last step is Euler, landing exactly on D at the last level.
    levels = ladders.karras_sigmas(40, 0.02, 20.0)
    done = samplers.sample_heun(gaussian_denoiser, x, levels)
    before_last = samplers.sample_heun(gaussian_denoiser, x, levels[:-1])
    torch.testing.assert_close(done, gaussian_denoiser(before_last, torch.tensor(0.02, dtype=torch.float64)))


def test_churn_samples_the_right_distribution_and_is_seeded() -> None:
    """With churn the sampler is stochastic but still targets N(MU, S^2)."""
    gens = noise.generators_for(3, 2000)
    x = noise.randn((2000, 1, 1, 1), torch.zeros((), dtype=torch.float64), gens) * 20.0
    levels = ladders.karras_sigmas(30, 0.01, 20.0)
    kwargs = dict(s_churn=40.0, s_min=0.05, s_max=10.0, s_noise=1.0)
    churned = samplers.sample_heun(gaussian_denoiser, x, levels, generator=noise.generators_for(4, 2000), **kwargs)
    plain = samplers.sample_heun(gaussian_denoiser, x, levels)
    assert float((churned - plain).abs().mean()) > 0.05  # the churn really adds noise
    # 2000 samples: the std's standard error is S / sqrt(2 * 2000) ~ 0.008.
    assert float(churned.mean()) == pytest.approx(MU, abs=0.05)
    assert float(churned.std()) == pytest.approx(S, abs=0.04)
    again = samplers.sample_heun(gaussian_denoiser, x, levels, generator=noise.generators_for(4, 2000), **kwargs)
    torch.testing.assert_close(again, churned, rtol=0, atol=0)


# -- memorisation with the empirical prior -----------------------------------------------------
def test_karras_samples_land_on_training_images(prior, image_folder: Path) -> None:  # type: ignore[no-untyped-def]
    data = training_set(image_folder)
    sigmas = ladders.karras_schedule_for(prior, 40)
    gens = noise.generators_for(0, 8)
    start = noise.randn((8, 3, SIZE, SIZE), torch.zeros(()), gens) * float(sigmas[0])
    denoise = lambda x, s: prior.denoise(x, s, None)  # noqa: E731
    samples = samplers.sample_heun(denoise, start, sigmas, generator=gens)
    rmse, index = nearest(samples, data)
    assert float(rmse.max()) < memorisation_threshold(data), rmse
    assert len(set(index.tolist())) >= 2  # different noises reach different images
    # The same with stochastic churn, its raised levels snapped onto the ladder.
    churned = samplers.sample_heun(
        denoise, start, sigmas, s_churn=80, s_min=0.05, s_max=50, s_noise=1.003,
        snap=ladders.ladder_snapper(prior.sigmas), generator=noise.generators_for(1, 8),
    )
    assert float(nearest(churned, data)[0].max()) < memorisation_threshold(data)


def test_annealed_paas_ascent_lands_on_training_images(prior, image_folder: Path) -> None:  # type: ignore[no-untyped-def]
    data = training_set(image_folder)
    low, high = default_sigma_range(prior)
    sigmas = sigma_schedule("annealed", prior.sigmas, 200, np.random.default_rng(0), low, high)
    assert sigmas[0] == pytest.approx(high, rel=0.01) and sigmas[-1] == pytest.approx(low, rel=0.01)
    denoise = lambda x, s: prior.denoise(x, s, None)  # noqa: E731
    start = torch.zeros(8, 3, SIZE, SIZE)
    samples = samplers.paas_ascent(denoise, start, sigmas, lr=0.05, generator=noise.generators_for(0, 8))
    rmse, index = nearest(samples, data)
    assert float(rmse.max()) < memorisation_threshold(data), rmse
    assert len(set(index.tolist())) >= 2
    # A quarter of the steps is not enough to settle: the test can tell.
    short = samplers.paas_ascent(denoise, start, sigmas[::8], lr=0.05, generator=noise.generators_for(0, 8))
    assert float(nearest(short, data)[0].max()) > memorisation_threshold(data)


def test_batched_paas_gradient_matches_the_engines_estimator(prior) -> None:  # type: ignore[no-untyped-def]
    y = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    for var_red in (True, False):
        ours = samplers.paas_gradient_batch(
            lambda x, s: prior.denoise(x, s, None), y, 0.7, n_noise=3, var_red=var_red,
            generator=torch.Generator().manual_seed(5),
        )
        engine = paas_gradient(prior, y, 0.7, None, n_noise=3, var_red=var_red, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(ours, engine)
    # One generator per image: an image's gradient does not depend on its batch mates.
    pair = torch.cat([y, torch.zeros_like(y)])
    both = samplers.paas_gradient_batch(
        lambda x, s: prior.denoise(x, s, None), pair, 0.7, generator=noise.generators_for(9, 2)
    )
    alone = samplers.paas_gradient_batch(
        lambda x, s: prior.denoise(x, s, None), y, 0.7, generator=noise.generators_for(9, 1)
    )
    torch.testing.assert_close(both[:1], alone)


# -- the command --------------------------------------------------------------------------------
def error_lines(stderr: str) -> list[str]:
    """stderr without plugin-loading warnings (another plugin may be broken while we test)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("sjc: warning")]


def sjc_in_process(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The CLI's own entry point in this process: (exit code, stderr). Saves a torch import."""
    from sjc_core.cli import main

    monkeypatch.setattr(sys, "argv", ["sjc", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_sjc_sample_karras_writes_training_images_and_is_reproducible(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["sample", "--prior", "empirical", "--set", f"prior.images={image_folder}", "--set", f"prior.resolution={SIZE}"]
    common += ["--method", "karras", "--n", "5", "--steps", "30", "--batch-size", "3"]
    code, stdout, stderr = run_sjc_command(*common, "--seed", "7", "--out", tmp_path / "a", env={"OMP_NUM_THREADS": "1"})
    assert code == 0, stderr
    assert "karras [" in stderr and "wrote 5 karras samples" in stdout  # the progress line and the summary
    out = tmp_path / "a"
    record = json.loads((out / "samples.json").read_text())
    assert record["method"] == "karras" and record["seed"] == 7 and record["n"] == 5
    assert record["prior"]["name"] == "empirical" and record["prior"]["resolution"] == SIZE
    assert record["sigmas"][-1] == 0.0 and record["files"] == [f"sample_{i:03d}.png" for i in range(5)]
    training = [read_png(p) for p in sorted(image_folder.glob("*.png"))]
    for name in record["files"]:
        picture = read_png(out / name)
        assert picture.shape == (SIZE, SIZE, 3)
        # The optimal denoiser memorises: each sample is one training PNG, pixel for pixel.
        assert min(np.abs(picture.astype(int) - t.astype(int)).max() for t in training) <= 1
    grid = read_png(out / "grid.png")
    assert grid.shape == (2 + 2 * (128 + 2), 2 + 3 * (128 + 2), 3)  # 5 tiles -> 3 columns, 2 rows
    np.testing.assert_array_equal(grid[2 : 2 + 128 : 8, 2 : 2 + 128 : 8], read_png(out / "sample_000.png"))

    # Same seed, other batch size: the same images (each image has its own generator).
    code, stderr = sjc_in_process([*common, "--batch-size", "5", "--seed", "7", "--out", tmp_path / "b"], monkeypatch, capsys)
    assert code == 0, stderr
    for name in record["files"] + ["grid.png"]:
        np.testing.assert_array_equal(read_png(out / name), read_png(tmp_path / "b" / name))
    assert json.loads((tmp_path / "b" / "samples.json").read_text())["sigmas"] == record["sigmas"]
    # The same folder again: refused in one line without --overwrite, replaced with it.
    code, stderr = sjc_in_process([*common, "--seed", "8", "--out", out], monkeypatch, capsys)
    assert code == 2 and len(error_lines(stderr)) == 1 and "--overwrite" in stderr, stderr
    assert json.loads((out / "samples.json").read_text())["seed"] == 7
    code, stderr = sjc_in_process([*common, "--n", "2", "--seed", "8", "--overwrite", "--out", out], monkeypatch, capsys)
    assert code == 0, stderr
    assert json.loads((out / "samples.json").read_text())["seed"] == 8
    assert sorted(p.name for p in out.glob("sample_*.png")) == ["sample_000.png", "sample_001.png"]


def test_sjc_sample_paas_from_a_recipe(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'seed = 4\n[prior]\nname = "empirical"\nimages = "{image_folder.as_posix()}"\nresolution = {SIZE}\n'
        '[paas]\nschedule = "random"\n'
    )
    out = tmp_path / "paas"
    args = ["sample", "--recipe", recipe, "--set", "paas.schedule=annealed", "--method", "paas", "--n", "3"]
    code, stderr = sjc_in_process([*args, "--steps", "200", "--out", out], monkeypatch, capsys)
    assert code == 0, stderr
    record = json.loads((out / "samples.json").read_text())
    assert record["seed"] == 4 and record["paas"]["schedule"] == "annealed" and len(record["sigmas"]) == 200
    assert record["sigmas"] == sorted(record["sigmas"], reverse=True)
    training = [read_png(p).astype(int) for p in sorted(image_folder.glob("*.png"))]
    for name in record["files"]:
        picture = read_png(out / name).astype(int)
        assert min(np.sqrt(((picture - t) ** 2).mean()) for t in training) < 3.0  # of 255


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--prior", "empiricl"], "prior.name: unknown prior 'empiricl' (known: empirical"),
        (["--prior", "empirical", "--set", "prior.resolution=abc"], "prior.resolution: Input should be a valid integer"),
        (["--prior", "empirical", "--set", "prior.resolutoin=8"], "prior.resolutoin: unknown key (did you mean 'resolution'?)"),
        (["--prior", "empirical", "--set", "paas.schedule=slow"], "paas.schedule: Input should be 'random' or 'annealed'"),
        (["--prior", "empirical", "--set", "lr=3"], "lr: unknown key"),
        (["--prior", "empirical", "--set", "novalue"], "expected KEY=VALUE"),
        (["--prior", "empirical", "--n", "0"], "--n: must be >= 1 (got 0)"),
        (["--prior", "empirical", "--method", "ddim"], "--method: unknown method 'ddim'"),
        (["--prior", "empirical", "--steps", "-3"], "--steps: must be >= 1 (got -3)"),
        ([], "give either --recipe RECIPE or --prior NAME"),
    ],
)
def test_sjc_sample_bad_input_is_one_line_exit_2(
    args: list[str], expected: str, image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = ["--set", f"prior.images={image_folder}"] if "--prior" in args else []
    code, stderr = sjc_in_process(["sample", *args, *folder, "--out", tmp_path / "o"], monkeypatch, capsys)
    lines = error_lines(stderr)
    assert code == 2 and len(lines) == 1 and expected in lines[0], stderr
    assert not (tmp_path / "o").exists()


# -- the tiny diffusers models ------------------------------------------------------------------
def scheduler_ladder(folder: Path) -> np.ndarray:
    """The VE ladder of a tiny model, straight from its scheduler config (no network loading)."""
    import diffusers

    from sjc_core.training.paas import vp_sigmas

    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    return vp_sigmas(scheduler.alphas_cumprod).numpy()


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("diffusers")
    try:
        from tiny_models import build_ddpm_folder, build_sd_folder
    except ImportError:  # tests/ imported as a package
        from tests.tiny_models import build_ddpm_folder, build_sd_folder

    root = tmp_path_factory.mktemp("tiny")
    return {"sd": build_sd_folder(root / "sd"), "ddpm": build_ddpm_folder(root / "ddpm")}


@pytest.mark.parametrize(
    "prior_args, method",
    [
        (["--prior", "stable-diffusion", "--set", "prior.prompt='a red cube'", "--set", "prior.guidance_scale=7.5"], "karras"),
        (["--prior", "pixel-diffusion"], "paas"),
    ],
)
def test_sjc_sample_with_tiny_diffusers_models(
    prior_args: list[str], method: str, tiny_folders: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Both priors and both methods end to end on real from_pretrained folders (random weights, so
    no image quality to check: only the plumbing, the ladder and the seeding)."""
    folder = tiny_folders["sd" if "stable-diffusion" in prior_args else "ddpm"]
    args = ["sample", *prior_args, "--set", f"prior.model={folder}", "--method", method, "--n", "3", "--batch-size", "2"]
    args += ["--steps", "4", "--seed", "1", "--device", "cpu", "--out", tmp_path / "out"]
    code, stderr = sjc_in_process(args, monkeypatch, capsys)
    assert code == 0, stderr
    record = json.loads((tmp_path / "out" / "samples.json").read_text())
    ladder = scheduler_ladder(folder)
    positive = [s for s in record["sigmas"] if s > 0]
    assert all(np.isclose(ladder, s, rtol=1e-6, atol=0).any() for s in positive)  # on the model's ladder
    if method == "karras":
        top = ladder[np.abs(np.log(ladder) - np.log(min(80.0, ladder.max()))).argmin()]
        assert record["sigmas"][-1] == 0.0 and positive[0] == pytest.approx(top) and positive[-1] == pytest.approx(ladder.min())
    else:
        low, high = record["paas"]["sigma_min"], record["paas"]["sigma_max"]
        assert len(record["sigmas"]) == 4 and all(low * 0.999 <= s <= high * 1.001 for s in record["sigmas"])
    pictures = [read_png(tmp_path / "out" / name) for name in record["files"]]
    size = 2 * SD_LATENT_SIZE if "stable-diffusion" in prior_args else PIXEL_SIZE  # the tiny VAE upsamples twice
    assert len(pictures) == 3 and all(p.shape == (size, size, 3) for p in pictures)
    assert record["image_size"] == [size, size] and (tmp_path / "out" / "grid.png").exists()
    assert not np.array_equal(pictures[0], pictures[1])  # each image has its own noise


def test_sample_without_out_writes_under_runs_never_loose_in_the_working_folder(tmp_path: Path) -> None:
    images = write_sample_images(tmp_path / "images", count=4, size=8)
    work = tmp_path / "work"
    work.mkdir()
    code, stdout, stderr = run_sjc_command(
        "sample", "--prior", "empirical", "--set", f"prior.images={images}", "--n", "1", "--steps", "2", cwd=work
    )
    assert code == 0, stderr
    assert sorted(p.name for p in work.iterdir()) == ["runs"]
    assert (work / "runs" / "samples-empirical" / "grid.png").is_file()
