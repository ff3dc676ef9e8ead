"""The example third-party plugin (examples/sjc-example-prior), installed for real.

The package is pip-installed into a throw-away venv; that venv's python then finds the
``gaussian`` prior and the ``noise-free`` estimator through ``importlib.metadata`` entry
points, lists them, validates a recipe with them, builds them and runs a recipe that uses
both. The denoiser's and the estimator's maths are checked in-process.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import torch

from conftest import REPO, pip_install, run_sjc_command, sjc_env

EXAMPLE = REPO / "examples" / "sjc-example-prior"

RECIPE = """\
name = "grey"
steps = 10
device = "cpu"

[prior]
name = "gaussian"
mean = [0.25, 0.5, 0.75]
std = 0.3
resolution = 32

[field]
name = "voxel"
grid_size = 16

[[losses]]
name = "emptiness"
"""


@pytest.fixture(scope="module")
def example():
    """The example module, imported from its source folder (for the maths tests)."""
    spec = importlib.util.spec_from_file_location("sjc_example_prior_src", EXAMPLE / "sjc_example_prior.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example_venv(make_venv, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with sjc-example-prior installed by pip (from a copy: no build files in the repo)."""
    python = make_venv("example_venv")
    source = tmp_path_factory.mktemp("example_src") / "sjc-example-prior"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip_install(python, str(source))
    return python


@pytest.fixture
def in_venv(example_venv: Path, tmp_path: Path):
    """``in_venv(*sjc_args) -> (code, out, err)`` run by the venv's python, away from the repo."""

    def run(*args: str):
        return run_sjc_command(*args, python=example_venv, cwd=tmp_path)

    return run


# --- installed through entry points --------------------------------------------------------


PROBE = """
import json, sjc_example_prior, torch
from importlib.metadata import entry_points
from sjc_core.contracts import BuildContext, Prior
from sjc_core.plugins import load_registry

eps = [[ep.value, ep.dist.name, ep.dist.version] for ep in entry_points(group="sjc") if ep.name == "gaussian"]
info = load_registry().get("priors", "gaussian")
prior = info.factory(info.options(std=0.5, resolution=8), BuildContext())
d = prior.denoise(torch.ones(2, 3, 8, 8), torch.tensor([0.5, 2.0]), prior.condition(None))
print(json.dumps({
    "entry_points": eps,
    "module_file": sjc_example_prior.__file__,
    "is_prior": isinstance(prior, Prior),
    "shape": [prior.channels, prior.resolution],
    "denoised": d[:, 0, 0, 0].tolist(),
}))
"""


def test_installed_entry_point_and_factory(example_venv: Path, tmp_path: Path) -> None:
    """importlib.metadata sees the entry point; the registry's factory builds a working prior."""
    proc = subprocess.run([str(example_venv), "-c", PROBE], capture_output=True, text=True, cwd=tmp_path, env=sjc_env())
    assert proc.returncode == 0, proc.stderr
    probe = json.loads(proc.stdout)
    assert probe["entry_points"] == [["sjc_example_prior", "sjc-example-prior", "0.1.0"]]
    # Imported from the venv's site-packages, not from the examples folder...
    assert Path(probe["module_file"]).is_relative_to(example_venv.parent.parent)
    # ...and the environment the tests run in does not have it.
    assert importlib.util.find_spec("sjc_example_prior") is None
    assert probe["is_prior"] and probe["shape"] == [3, 8]
    # Mean colour 0.5 is 0 in the model range, so D = s^2 x / (s^2 + sigma^2) with s = 0.5, x = 1.
    assert probe["denoised"] == pytest.approx([0.25 / 0.5, 0.25 / 4.25])


def test_list_plugins_shows_the_example(in_venv) -> None:
    code, out, err = in_venv("list-plugins", "--json", "--kind", "priors")
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)["plugins"]}
    gaussian = rows["gaussian"]
    assert gaussian["distribution"] == "sjc-example-prior" and gaussian["version"] == "0.1.0"
    assert gaussian["module"] == "sjc_example_prior"
    assert gaussian["description"].startswith("Exact denoiser of a Gaussian image distribution")
    options = {o["name"]: o for o in gaussian["options"]}
    assert options["mean"]["default"] == [0.5, 0.5, 0.5]
    assert options["std"] == {
        "name": "std",
        "type": "float",
        "default": 0.5,
        "required": False,
        "description": "per-pixel standard deviation, in the [-1, 1] model range",
    }
    assert options["resolution"]["default"] == 64
    assert "empirical" in rows  # built-ins still there, from the same entry-point group


def test_list_plugins_shows_the_example_estimator(in_venv) -> None:
    code, out, err = in_venv("list-plugins", "--json", "--kind", "estimators")
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)["plugins"]}
    assert rows["noise-free"]["distribution"] == "sjc-example-prior"
    assert rows["noise-free"]["module"] == "sjc_example_prior"
    assert {o["name"]: o["default"] for o in rows["noise-free"]["options"]} == {"sigma_min": 0.1, "sigma_max": 10.0}
    assert {"paas", "sds", "ism"} <= set(rows)  # the built-ins, beside it


def test_a_recipe_with_the_example_estimator_runs(in_venv, tmp_path: Path) -> None:
    """`sjc run` with the example's prior and estimator: finished, its term logged, its schedule used."""
    path = tmp_path / "grey.toml"
    path.write_text(
        RECIPE.replace("steps = 10", "steps = 6\ncheckpoint_every = 3\nview_every = 3")
        + '\n[camera]\ntest_frames = 2\n\n[estimator]\nname = "noise-free"\nsigma_min = 0.5\nsigma_max = 8.0\n'
    )
    code, out, err = in_venv("run", str(path), "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    assert out.startswith("finished:")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(set(r["terms"]) == {"emptiness", "noise-free"} for r in records)
    sigmas = [r["sigma"] for r in records]
    assert sigmas[0] == pytest.approx(8.0) and sigmas[-1] == pytest.approx(0.5)
    assert sigmas == sorted(sigmas, reverse=True)
    saved = tomllib.loads((tmp_path / "run" / "recipe.toml").read_text())
    assert saved["estimator"] == {"name": "noise-free", "sigma_min": 0.5, "sigma_max": 8.0} and "paas" not in saved
    # a bad option of the third-party estimator is one line naming it
    path.write_text(path.read_text().replace("sigma_min = 0.5", "sigma_min = 20.0"))
    code, out, err = in_venv("validate", str(path))
    assert code == 2 and err.strip().splitlines() == [f"error: {path}: estimator: sigma_min 20.0 is above sigma_max 8.0"]


def test_validate_a_recipe_with_the_example(in_venv, tmp_path: Path) -> None:
    path = tmp_path / "grey.toml"
    path.write_text(RECIPE)
    code, out, err = in_venv("validate", str(path), "--set", "prior.levels=50")
    assert code == 0, err
    prior = tomllib.loads(out)["prior"]
    assert prior == {
        "name": "gaussian",
        "mean": [0.25, 0.5, 0.75],
        "std": 0.3,
        "resolution": 32,
        "sigma_min": 0.002,
        "sigma_max": 80.0,
        "levels": 50,
    }


def test_the_example_checks_its_options(in_venv, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(RECIPE.replace("std = 0.3", "std = 0.0").replace("0.75", "1.5"))
    code, out, err = in_venv("validate", str(path), "--set", "prior.resolution=-4")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"error: {path}: prior.mean: each channel must lie in [0, 1]",
        f"error: {path}: prior.std: Input should be greater than 0 (got 0.0)",
        f"error: {path}: prior.resolution: Input should be greater than 0 (got '-4')",
    ]


def test_unknown_prior_lists_the_example_among_known_names(in_venv, tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(RECIPE.replace('"gaussian"', '"gausian"'))
    code, out, err = in_venv("validate", str(path))
    assert code == 2
    assert err.strip().startswith(f"error: {path}: prior.name: unknown prior 'gausian' (known: gaussian, ")


# --- the maths, in-process -----------------------------------------------------------------


def make_prior(example, **options):
    from sjc_core.contracts import BuildContext

    return example.build_gaussian(example.GaussianOptions(**options), BuildContext())


def test_denoiser_is_tweedies_formula_for_the_gaussian(example) -> None:
    """D(x; sigma) = x + sigma^2 * grad log p_sigma(x), p_sigma = N(mean, (std^2 + sigma^2) I)."""
    prior = make_prior(example, mean=(0.1, 0.6, 0.9), std=0.4, resolution=4)
    torch.manual_seed(0)
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.05, 0.7, 9.0], dtype=torch.float64)
    var = 0.4**2 + sigma.view(-1, 1, 1, 1) ** 2
    mean = (torch.tensor([0.1, 0.6, 0.9], dtype=torch.float64) * 2 - 1).view(1, 3, 1, 1)
    log_p = (-((x - mean) ** 2) / (2 * var)).sum()
    (score,) = torch.autograd.grad(log_p, x)
    expected = x.detach() + sigma.view(-1, 1, 1, 1) ** 2 * score
    got = prior.denoise(x.detach(), sigma, None)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_denoiser_matches_a_monte_carlo_posterior_mean(example) -> None:
    """E[x0 | x0 + sigma n = y] estimated by self-normalised importance weights over samples."""
    prior = make_prior(example, mean=(0.5, 0.5, 0.5), std=0.5, resolution=1)
    generator = torch.Generator().manual_seed(1)
    samples = 0.5 * torch.randn(200_000, 3, 1, 1, generator=generator, dtype=torch.float64)  # N(0, 0.25)
    y = torch.tensor([0.8, -0.3, 0.1], dtype=torch.float64).view(1, 3, 1, 1)
    sigma = 0.6
    log_w = -((y - samples) ** 2).sum(dim=(1, 2, 3)) / (2 * sigma**2)
    w = torch.softmax(log_w, dim=0).view(-1, 1, 1, 1)
    estimate = (w * samples).sum(dim=0, keepdim=True)
    torch.testing.assert_close(prior.denoise(y, torch.tensor(sigma), None), estimate, atol=5e-3, rtol=0)


def test_prior_contract(example) -> None:
    from sjc_core.contracts import Prior

    prior = make_prior(example, resolution=16, sigma_min=0.01, sigma_max=10.0, levels=5)
    assert isinstance(prior, Prior)
    assert (prior.channels, prior.resolution, prior.value_range) == (3, 16, (-1.0, 1.0))
    torch.testing.assert_close(prior.sigmas, torch.tensor([0.01 * 10 ** (0.75 * k) for k in range(5)]))
    assert prior.condition(None) is None
    x = torch.linspace(-3, 3, 2 * 3 * 16 * 16).view(2, 3, 16, 16)
    assert prior.denoise(x, torch.tensor(1.0), None).shape == x.shape
    rgb = prior.to_rgb(x)
    assert rgb.min() == 0 and rgb.max() == 1
    torch.testing.assert_close(prior.to_rgb(torch.zeros(1, 3, 2, 2)), torch.full((1, 3, 2, 2), 0.5))


def test_noise_free_estimator_is_the_mean_of_paas_on_the_gaussian(example) -> None:
    """(D(y) - y) / sigma in closed form, and PAAS's average over many noises converges to it."""
    from sjc_core.recipes.model import PaasConfig
    from sjc_core.training.paas import PaasEstimator

    prior = make_prior(example, mean=(0.2, 0.5, 0.9), std=0.4, resolution=4)
    estimator = example.build_noise_free(example.NoiseFreeOptions(sigma_min=0.5, sigma_max=4.0), None)
    sigmas = estimator.schedule(prior, 4, None)
    assert sigmas == pytest.approx([4.0, 2.0, 1.0, 0.5])
    y = torch.linspace(-1, 1, 48, dtype=torch.float64).view(1, 3, 4, 4)
    mean = (torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64) * 2 - 1).view(1, 3, 1, 1)
    sigma = 1.5
    g = estimator.gradient(prior, y, sigma, 0.0, None, None)
    torch.testing.assert_close(g, sigma * (mean - y) / (0.4**2 + sigma**2), rtol=1e-12, atol=1e-12)
    paas = PaasEstimator(PaasConfig(n_noise=256))  # mean noise: std 1/16, shrunk by std^2/(std^2+sigma^2)
    averaged = paas.gradient(prior, y, sigma, 0.0, None, torch.Generator().manual_seed(0))
    torch.testing.assert_close(averaged, g, atol=0.03, rtol=0)


def test_options_reject_bad_values(example) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="each channel must lie in"):
        example.GaussianOptions(mean=(0.5, 0.5, 2.0))
    with pytest.raises(ValidationError, match="must be below sigma_max"):
        example.GaussianOptions(sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValidationError, match="extra"):
        example.GaussianOptions(colour=1)


def test_the_example_pyproject_declares_the_entry_point() -> None:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["sjc"] == {"gaussian": "sjc_example_prior"}
    assert "[project.entry-points.sjc]" in (EXAMPLE / "README.md").read_text()
