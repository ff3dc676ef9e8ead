"""The ``[estimator]`` table, ``[paas]`` as its legacy spelling, and ``sjc sample --method``.

The rules: ``[estimator]`` names an estimator plugin with its options; ``[paas]`` means
``[estimator] name = "paas"``; neither means PAAS with its defaults; both is one error
line. Malformed tables are checked through the real CLI (a subprocess): one line each,
exit code 2, no traceback and no run folder.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_sjc_command
from sjc_core.errors import SjcError
from sjc_core.plugins import load_registry
from sjc_core.recipes.model import PaasConfig
from sjc_core.recipes.recipe import validate_recipe
from sjc_core.sampling import noise, samplers
from sjc_core.training.paas import PaasEstimator
from test_engine import make_images


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    return load_registry(warn=lambda message: None)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_images(tmp_path_factory.mktemp("estimator_images") / "images")


def base(images: Path) -> dict:
    return {
        "steps": 4,
        "device": "cpu",
        "prior": {"name": "empirical", "images": str(images), "resolution": 16},
        "field": {"name": "voxel", "grid_size": 8},
    }


def problems(raw: dict, registry) -> list[str]:  # type: ignore[no-untyped-def]
    try:
        validate_recipe(raw, registry, base_dir=Path.cwd(), source="r.toml")
    except SjcError as exc:
        return exc.problems
    return []


def test_neither_table_is_paas_with_its_defaults(images: Path, registry) -> None:  # type: ignore[no-untyped-def]
    recipe = validate_recipe(base(images), registry, base_dir=Path.cwd())
    assert recipe.estimator.info.name == "paas" and recipe.estimator.options == PaasConfig()
    resolved = recipe.resolved()
    assert resolved["paas"] == PaasConfig().model_dump(mode="json") and "estimator" not in resolved


def test_paas_has_two_spellings_and_resolves_to_the_legacy_one(images: Path, registry) -> None:  # type: ignore[no-untyped-def]
    legacy = {**base(images), "paas": {"schedule": "annealed", "n_noise": 3}}
    spelled = {**base(images), "estimator": {"name": "paas", "schedule": "annealed", "n_noise": 3}}
    one, other = (validate_recipe(raw, registry, base_dir=Path.cwd()) for raw in (legacy, spelled))
    assert one.estimator.options == other.estimator.options == PaasConfig(schedule="annealed", n_noise=3)
    assert other.settings.paas == other.estimator.options  # code reading settings.paas sees what runs
    assert one.resolved() == other.resolved()
    assert one.resolved()["paas"]["n_noise"] == 3 and "estimator" not in one.resolved()


def test_other_estimators_resolve_to_an_estimator_table(images: Path, registry) -> None:  # type: ignore[no-untyped-def]
    raw = {**base(images), "estimator": {"name": "ism", "interval": 0.05}}
    recipe = validate_recipe(raw, registry, base_dir=Path.cwd())
    resolved = recipe.resolved()
    assert "paas" not in resolved
    assert resolved["estimator"]["name"] == "ism" and resolved["estimator"]["interval"] == 0.05
    assert resolved["estimator"]["inversion_steps"] == 5  # defaults written out
    again = validate_recipe({k: v for k, v in resolved.items()}, registry, base_dir=Path.cwd())
    assert again.resolved() == resolved  # the resolved recipe round-trips


def test_paas_is_known_when_plugins_are_restricted(images: Path, registry) -> None:  # type: ignore[no-untyped-def]
    from sjc_core.plugins import Registry

    only = Registry(entries={k: v for k, v in registry.entries.items() if k[0] != "estimators"})
    for raw in ({**base(images), "paas": {"n_noise": 2}}, {**base(images), "estimator": {"name": "paas"}}):
        recipe = validate_recipe(raw, only, base_dir=Path.cwd())
        assert recipe.estimator.info.name == "paas" and recipe.estimator.info.module == "sjc_core.training.paas"
    assert problems({**base(images), "estimator": {"name": "sds"}}, only) == [
        "r.toml: estimator.name: unknown estimator 'sds' (known: paas)"
    ]


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"paas": {}, "estimator": {"name": "sds"}}, "r.toml: estimator: give [estimator] or the legacy [paas] table, not both"),
        ({"estimator": {"t_range": [0.1, 0.2]}}, "r.toml: estimator.name: required: the estimator plugin to use (known: ism, paas, sds)"),
        ({"estimator": {"name": "sdss"}}, "r.toml: estimator.name: unknown estimator 'sdss' (known: sds, "),
        ({"estimator": 3}, "r.toml: estimator: expected a table"),
        ({"estimator": {"name": "sds", "weighting": "cubic"}}, "r.toml: estimator.weighting: Input should be 'sds', 'uniform' or 'fantasia3d'"),
        ({"estimator": {"name": "sds", "n_noize": 2}}, "r.toml: estimator.n_noize: unknown key (did you mean 'n_noise'?)"),
        ({"estimator": {"name": "sds", "t_range": [0.9, 0.1]}}, "r.toml: estimator.t_range: low end 0.9 is above high end 0.1"),
        ({"estimator": {"name": "ism", "inversion_steps": True}}, "r.toml: estimator.inversion_steps: "),
        ({"estimator": {"name": "ism", "interval": float("nan")}}, "r.toml: estimator.interval: "),
        ({"estimator": {"name": "ism", "t_range": [0.0, 0.99]}}, "r.toml: estimator.warmup_t_max: 0.98 is below"),
        ({"estimator": {"name": "paas", "schedule": "slow"}}, "r.toml: estimator.schedule: Input should be 'random' or 'annealed'"),
    ],
)
def test_malformed_estimator_tables_are_one_line(images: Path, registry, change: dict, expected: str) -> None:  # type: ignore[no-untyped-def]
    found = problems({**base(images), **change}, registry)
    assert len(found) == 1 and found[0].startswith(expected), found
    assert "\n" not in found[0]


def write(path: Path, images: Path, table: str) -> Path:
    """A tiny recipe with ``table`` appended (put first when it is a top-level key, not a table)."""
    top, table = ("", table) if table.startswith("[") or not table else (table, "")
    path.write_text(
        f'{top}name = "est"\nsteps = 3\ndevice = "cpu"\noutput = "{(path.parent / "runs").as_posix()}"\n'
        f'[prior]\nname = "empirical"\nimages = "{images.as_posix()}"\nresolution = 16\n'
        f'[field]\nname = "voxel"\ngrid_size = 8\n[camera]\ntest_frames = 2\n{table}'
    )
    return path


@pytest.mark.parametrize(
    "table, line",
    [
        ('[paas]\nn_noise = 2\n[estimator]\nname = "sds"\n', "estimator: give [estimator] or the legacy [paas] table, not both"),
        ('[estimator]\nname = "isn"\n', "estimator.name: unknown estimator 'isn' (known: ism, "),
        ('[estimator]\nname = "ism"\ninterval = -1\n', "estimator.interval: Input should be greater than 0 (got -1)"),
        ('estimator = "sds"\n', "estimator: expected a table"),
    ],
)
def test_cli_refuses_malformed_estimator_tables_in_one_line(tmp_path: Path, images: Path, table: str, line: str) -> None:
    recipe = write(tmp_path / "r.toml", images, table)
    for command in (("validate", str(recipe)), ("run", str(recipe))):
        code, out, err = run_sjc_command(*command, cwd=tmp_path)
        lines = [l for l in err.strip().splitlines() if not l.startswith("sjc: warning")]
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {recipe}: {line}"), err
        assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_cli_runs_and_resolves_each_estimator(tmp_path: Path, images: Path) -> None:
    """`sjc run --set estimator.name=...`: the run's metrics carry the estimator's term and levels."""
    recipe = write(tmp_path / "r.toml", images, "")
    code, out, err = run_sjc_command(
        "run", recipe, "--set", "estimator.name=sds", "--set", "estimator.t_range=[0.5, 0.5]",
        "--run-dir", tmp_path / "sds", cwd=tmp_path,
    )
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "sds" / "metrics.jsonl").read_text().splitlines()]
    ladder = np.geomspace(0.01, 80.0, 1000)
    assert all(set(r["terms"]) == {"sds"} for r in records)
    assert all(r["sigma"] == pytest.approx(ladder[500]) for r in records)  # int(0.5 * 1000)
    saved = tomllib.loads((tmp_path / "sds" / "recipe.toml").read_text())
    assert saved["estimator"]["name"] == "sds" and saved["estimator"]["t_range"] == [0.5, 0.5] and "paas" not in saved


# -- sjc sample --method ------------------------------------------------------------------------


def test_paas_through_estimator_ascent_is_paas_ascent(images: Path, registry) -> None:  # type: ignore[no-untyped-def]
    recipe = validate_recipe(base(images), registry, base_dir=Path.cwd())
    from sjc_core.contracts import BuildContext

    prior = recipe.prior.info.factory(recipe.prior.options, BuildContext())
    options = PaasConfig(schedule="annealed", n_noise=2)
    estimator = PaasEstimator(options)
    sigmas = estimator.schedule(prior, 30, np.random.default_rng([0, 1]))
    start = torch.zeros(3, 3, 16, 16)
    cond = prior.condition(None)
    ours = samplers.estimator_ascent(estimator, prior, start, sigmas, cond, generator=noise.generators_for(0, 3))
    old = samplers.paas_ascent(
        lambda x, s: prior.denoise(x, s, cond), start, sigmas, n_noise=2, generator=noise.generators_for(0, 3)
    )
    assert torch.equal(ours, old)


@pytest.mark.parametrize("method", ["sds", "ism"])
def test_sjc_sample_takes_any_estimator(tmp_path: Path, images: Path, method: str) -> None:
    args = ["sample", "--prior", "empirical", "--set", f"prior.images={images}", "--set", "prior.resolution=16"]
    args += ["--method", method, "--n", "2", "--steps", "12", "--seed", "5", "--sigma-min", "0.1", "--sigma-max", "20"]
    code, out, err = run_sjc_command(*args, "--set", "estimator.scale=2", "--out", tmp_path / "o", cwd=tmp_path,
                                     env={"OMP_NUM_THREADS": "1"})
    assert code == 0, err
    record = json.loads((tmp_path / "o" / "samples.json").read_text())
    assert record["method"] == method and len(record["sigmas"]) == 12
    assert record[method]["scale"] == 2 and record[method]["sigma_min"] == 0.1 and record[method]["sigma_max"] == 20
    assert all(0.1 * 0.999 <= s <= 20 * 1.001 for s in record["sigmas"])
    assert len(record["files"]) == 2 and (tmp_path / "o" / "grid.png").exists()


@pytest.mark.parametrize(
    "extra, line",
    [
        (["--method", "sds", "--set", "estimator.name=ism"], "--set estimator.name='ism': the estimator is --method's (sds)"),
        (["--method", "sds", "--set", "estimator.weighting=cubic"], "estimator.weighting: Input should be"),
        (["--method", "ism", "--set", "estimator.bogus=1"], "estimator.bogus: unknown key"),
        (["--method", "noise"], "--method: unknown method 'noise'"),
    ],
)
def test_sjc_sample_bad_estimator_input_is_one_line(tmp_path: Path, images: Path, extra: list[str], line: str) -> None:
    args = ["sample", "--prior", "empirical", "--set", f"prior.images={images}", *extra, "--out", tmp_path / "o"]
    code, out, err = run_sjc_command(*args, cwd=tmp_path)
    lines = [l for l in err.strip().splitlines() if not l.startswith("sjc: warning")]
    assert code == 2 and len(lines) == 1 and line in lines[0], err
    assert not (tmp_path / "o").exists()


def test_sjc_sample_from_a_paas_recipe_with_another_method(tmp_path: Path, images: Path) -> None:
    """A recipe's [paas] table gives way to --method's estimator (its defaults and --set estimator.*)."""
    recipe = write(tmp_path / "r.toml", images, '[paas]\nschedule = "annealed"\n')
    args = ["sample", "--recipe", recipe, "--method", "sds", "--set", "estimator.n_noise=2", "--n", "1", "--steps", "3"]
    code, out, err = run_sjc_command(*args, "--out", tmp_path / "o", cwd=tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "samples.json").read_text())["sds"]["n_noise"] == 2


def test_set_estimator_name_switches_a_shipped_recipe(registry) -> None:  # type: ignore[no-untyped-def]
    """`--set estimator.name=NAME` on a recipe with a legacy [paas] table: NAME from its
    defaults, then later `--set estimator.*` apply; naming paas keeps the [paas] options."""
    from sjc_core.recipes.recipe import load_recipe

    chair = Path(__file__).resolve().parents[1] / "recipes" / "chair.toml"
    sds = load_recipe(chair, registry, overrides=["estimator.name=sds", 'estimator.weighting="uniform"'])
    assert sds.estimator.info.name == "sds" and sds.estimator.options.weighting == "uniform"
    assert sds.estimator.options.t_range == (0.02, 0.98)  # the rest: sds's defaults
    kept = load_recipe(chair, registry, overrides=["paas.n_noise=3", "estimator.name=paas"])
    assert kept.estimator.info.name == "paas" and kept.estimator.options.n_noise == 3
    assert kept.estimator.options.var_red is True
    back = load_recipe(chair, registry, overrides=["estimator.name=ism", "estimator.name=sds"])
    assert back.estimator.info.name == "sds"


def test_set_estimator_name_through_the_cli() -> None:
    root = Path(__file__).resolve().parents[1]
    code, _, err = run_sjc_command("validate", "recipes/chair.toml", "--set", "estimator.name=sds", cwd=root)
    assert code == 0, err
    code, _, err = run_sjc_command(
        "validate", "recipes/chair.toml", "--set", "estimator.name=sds", "--set", "estimator.var_red=true", cwd=root
    )
    assert code == 2 and err.count("\n") == 1 and "estimator.var_red" in err and "Traceback" not in err, err
