"""The ``sjc`` command line as a user runs it: help, list-plugins, validate, shipped recipes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, sjc_env
from sjc_core.plugins import load_registry
from sjc_core.recipes.recipe import load_recipe
from sjc_core.recipes.toml_out import dumps

RECIPES = sorted((REPO / "recipes").glob("*.toml"))

TOY_RECIPE = """\
name = "toy run"
steps = 50

[prior]
name = "toy"
prompt = 'say "hi"'

[field]
name = "toy-grid"

[[losses]]
name = "toy-smooth"
"""


def test_help_through_the_console_script(tmp_path: Path) -> None:
    script = shutil.which("sjc")
    assert script, "the sjc console script is not installed"
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, env=sjc_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for command in ("list-plugins", "validate", "run", "render"):
        assert command in proc.stdout
    assert "Score Jacobian Chaining" in proc.stdout


def test_help_of_a_command(run_sjc, toy_plugins_env) -> None:
    code, out, err = run_sjc("validate", "--help", env=toy_plugins_env)
    assert code == 0, err
    assert "--set" in out and "recipe" in out.lower() and "KEY=VALUE" in out


@pytest.mark.parametrize("command", [[], ["run"], ["render"], ["export-mesh"], ["batch"]])
def test_switches_are_listed_without_a_type(run_sjc, command: list[str]) -> None:
    """``--help`` and ``--resume/--no-resume`` take no value: no ``<bool>`` beside them."""
    code, out, err = run_sjc(*command, "--help", env={"COLUMNS": "200"})
    assert code == 0, err
    help_line = next(line for line in out.splitlines() if "--help" in line and "Show this message" in line)
    assert "<" not in help_line, help_line
    assert "<bool>" not in out
    assert "<path>" in out or not command  # options that take a value keep their type


def test_unknown_command_is_a_usage_error(run_sjc, toy_plugins_env) -> None:
    code, _, err = run_sjc("frobnicate", env=toy_plugins_env)
    assert code == 2
    assert "No such command" in err and "Traceback" not in err


def test_list_plugins_json_shape(run_sjc, toy_plugins_env) -> None:
    code, out, err = run_sjc("list-plugins", "--json", env=toy_plugins_env)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["warnings"] == []
    rows = {(row["kind"], row["name"]): row for row in payload["plugins"]}
    assert list(rows) == [
        ("priors", "toy"),
        ("priors", "toy-xl"),
        ("fields", "toy-grid"),
        ("losses", "toy-smooth"),
        ("losses", "toy-sparsity"),
    ]
    toy = rows[("priors", "toy")]
    assert {k: toy[k] for k in ("kind", "name", "distribution", "version", "module", "description")} == {
        "kind": "priors",
        "name": "toy",
        "distribution": "sjc-toy",
        "version": "0.3",
        "module": "sjc_toy_plugins",
        "description": "A prior with known options",
    }
    assert toy["options"] == [
        {"name": "prompt", "type": "str", "default": "a hamburger", "required": False, "description": "text prompt"},
        {
            "name": "guidance_scale",
            "type": "float",
            "default": 100.0,
            "required": False,
            "description": "classifier-free guidance scale",
        },
        {"name": "resolution", "type": "int", "default": 64, "required": False, "description": "image size"},
        {
            "name": "view_dependent",
            "type": "bool",
            "default": True,
            "required": False,
            "description": "add the view to the prompt",
        },
    ]


def test_list_plugins_kind_filter(run_sjc, toy_plugins_env) -> None:
    code, out, err = run_sjc("list-plugins", "--kind", "losses", "--json", env=toy_plugins_env)
    assert code == 0, err
    assert [(r["kind"], r["name"]) for r in json.loads(out)["plugins"]] == [
        ("losses", "toy-smooth"),
        ("losses", "toy-sparsity"),
    ]


def test_list_plugins_text(run_sjc, toy_plugins_env) -> None:
    code, out, err = run_sjc("list-plugins", "--kind", "fields", env=toy_plugins_env)
    assert code == 0, err
    assert out.splitlines() == [
        "fields:",
        "  toy-grid  [sjc-toy 0.3]  A field with known options",
        "      grid_size: int (default 32)  cells per side",
    ]


def test_list_plugins_unknown_kind(run_sjc, toy_plugins_env) -> None:
    code, out, err = run_sjc("list-plugins", "--kind", "shaders", env=toy_plugins_env)
    assert (code, out) == (2, "")
    assert err == "error: --kind: unknown kind 'shaders' (known: priors, fields, losses, estimators)\n"


def test_validate_prints_every_default(run_sjc, toy_plugins_env, tmp_path: Path) -> None:
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    code, out, err = run_sjc("validate", path, env=toy_plugins_env)
    assert code == 0, err
    data = tomllib.loads(out)
    assert data["name"] == "toy run" and data["steps"] == 50 and data["seed"] == 0
    assert data["device"] == "auto" and data["lr"] == 0.05 and data["output"] == "runs"
    assert data["prior"] == {
        "name": "toy",
        "prompt": 'say "hi"',
        "guidance_scale": 100.0,
        "resolution": 64,
        "view_dependent": True,
    }
    assert data["field"] == {"name": "toy-grid", "grid_size": 32}
    assert data["losses"] == [{"name": "toy-smooth", "weight": 1.0}]
    assert data["camera"]["radius"] == 1.5 and data["camera"]["fov_range"] == [40.0, 70.0]
    assert data["paas"]["schedule"] == "random" and data["paas"]["var_red"] is True
    assert "sigma_min" not in data["paas"]  # None (the prior's default) is left out


def test_validate_output_round_trips(run_sjc, toy_plugins_env, tmp_path: Path) -> None:
    first = tmp_path / "toy.toml"
    first.write_text(TOY_RECIPE)
    code, once, err = run_sjc("validate", first, "--set", "camera.resolution=32", env=toy_plugins_env)
    assert code == 0, err
    second = tmp_path / "resolved.toml"
    second.write_text(once)
    code, twice, err = run_sjc("validate", second, env=toy_plugins_env)
    assert code == 0, err
    assert twice == once
    assert tomllib.loads(once)["camera"]["resolution"] == 32


# --- the shipped recipes, with the built-in plugins -----------------------------------------


@pytest.fixture(scope="module")
def builtin_registry():
    registry = load_registry(warn=lambda message: None)
    assert registry.warnings == [], registry.warnings
    return registry


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate_and_round_trip(recipe: Path, builtin_registry, tmp_path: Path) -> None:
    resolved = load_recipe(recipe, builtin_registry).resolved()
    again = tmp_path / recipe.name
    again.write_text(dumps(resolved))
    assert load_recipe(again, builtin_registry).resolved() == resolved


def test_validate_the_demo_recipe_through_the_console_script() -> None:
    script = shutil.which("sjc")
    assert script
    proc = subprocess.run(
        [script, "validate", "recipes/demo.toml", "--set", "steps=20"],
        capture_output=True,
        text=True,
        env=sjc_env(),
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    data = tomllib.loads(proc.stdout)
    assert data["steps"] == 20 and data["prior"]["name"] == "empirical" and data["field"]["name"] == "voxel"


# --- validate runs what `sjc run` checks before training --------------------------------------


def test_validate_checks_what_the_run_needs(run_sjc, tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[prior]\nname = "empirical"\nimages = "pictures"\n')
    code, out, err = run_sjc("validate", recipe, cwd=tmp_path)
    assert (code, out) == (2, "") and "Traceback" not in err
    assert err.strip().splitlines() == [f"error: {recipe}: prior.images: {tmp_path / 'pictures'}: no such folder"]
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "notes.txt").write_text("no pictures here")
    code, out, err = run_sjc("validate", recipe, "--set", "device=cuda", cwd=tmp_path)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err and lines[-1].startswith(f"error: {recipe}: prior.images: ")
    assert "no images" in lines[-1]
    import torch

    if not torch.cuda.is_available():
        assert lines[0] == f"error: {recipe}: device: 'cuda' requested but no CUDA device is available (use 'auto' or 'cpu')"
    assert not (tmp_path / "runs").exists()


def test_validate_notes_weights_this_machine_lacks(run_sjc, tmp_path: Path) -> None:
    """The recipe is fine; the weights are not downloaded: a note on stderr, exit 0."""
    code, out, err = run_sjc(
        "validate", REPO / "recipes" / "rose.toml", cwd=tmp_path,
        env={"HF_HUB_CACHE": str(tmp_path / "empty-cache"), "SJC_ALLOW_DOWNLOAD": None},
    )
    assert code == 0, err
    assert tomllib.loads(out)["prior"]["prompt"] == "a DSLR photo of a rose"
    (note,) = [line for line in err.splitlines() if line.strip()]
    assert note.startswith("sjc: note: ") and "rose.toml: prior.model: " in note and "not in the local" in note
    # sjc run stops on what validate notes, with the same words, before torch is imported
    report = tmp_path / "torch-imported.txt"
    script = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(report)!r}, 'w').write(str('torch' in sys.modules)))\n"
        "from sjc_core.cli import main\n"
        f"sys.argv = ['sjc', 'run', {str(REPO / 'recipes' / 'rose.toml')!r}]\n"
        "main()\n"
    )
    env = sjc_env({"HF_HUB_CACHE": str(tmp_path / "empty-cache"), "SJC_ALLOW_DOWNLOAD": None})
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [note.replace("sjc: note: ", "error: ")]
    assert report.read_text() == "False" and not (tmp_path / "runs").exists()


def test_listed_option_types_are_plain(builtin_registry) -> None:
    types = {(info.name, row["name"]): row["type"] for info in builtin_registry.entries.values()
             for row in info.option_rows()}
    assert types[("voxel", "grid_size")] == "int | list[int]"
    assert types[("voxel", "box_half")] == "float"
    assert types[("hashgrid", "levels")] == "int | None"
    assert types[("empirical", "background")] == "tuple[float, float, float]"
    assert types[("stable-diffusion", "revision")] == "str | None"
    assert types[("stable-diffusion", "view_prompts")] == "bool"
    assert not [key for key, name in types.items() if "Annotated" in name or "Validator" in name]
