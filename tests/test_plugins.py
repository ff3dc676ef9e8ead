"""Plugin discovery through the ``sjc`` entry-point group, with real distributions.

Every third-party plugin here is an installed distribution (a ``*.dist-info`` folder with
``entry_points.txt`` on ``PYTHONPATH``) seen by a fresh ``python -m sjc_core`` process
through ``importlib.metadata``; nothing patches the registry.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

import pytest
from conftest import write_dist

BUILTINS = {
    # entry point name -> (kind, plugin name, an option it must have)
    "empirical": ("priors", "empirical", None),
    "voxel": ("fields", "voxel", "grid_size"),
    "emptiness": ("losses", "emptiness", "weight"),
    "center_depth": ("losses", "center-depth", "weight"),
    "paas": ("estimators", "paas", "n_noise"),
    "sds": ("estimators", "sds", "weighting"),
    "ism": ("estimators", "ism", "interval"),
    "mvdream": ("priors", "mvdream", "views"),
    "gaussians": ("fields", "gaussians", "max_splats"),
    "stable_diffusion": ("priors", "stable-diffusion", "lora"),
    "zero123": ("priors", "zero123", "lora"),
    "pixel": ("priors", "ffhq", "num_head_channels"),
}


def plugin_source(kind: str, name: str, description: str = "a test plugin") -> str:
    return f'''
from pydantic import BaseModel, ConfigDict, Field
from sjc_core.hookspecs import hookimpl


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strength: float = Field(1.0, ge=0, description="how strong")


@hookimpl
def register_{kind}(register):
    register(name="{name}", factory=lambda options, ctx: None, description="{description}", options=Options)
'''


def env_with(*roots: Path, **extra: str | None) -> dict[str, str | None]:
    return {"PYTHONPATH": os.pathsep.join(str(r) for r in roots), **extra}


def listing(stdout: str) -> dict[tuple[str, str], dict]:
    return {(row["kind"], row["name"]): row for row in json.loads(stdout)["plugins"]}


@pytest.fixture(scope="module")
def builtin_listing(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, str]:
    from conftest import run_sjc_command

    return run_sjc_command("list-plugins", "--json", cwd=tmp_path_factory.mktemp("cwd"))


def test_builtins_are_declared_as_sjc_entry_points() -> None:
    eps = {ep.name: ep for ep in metadata.entry_points(group="sjc") if ep.dist and ep.dist.name == "sjc"}
    assert set(BUILTINS) <= set(eps)
    for name in BUILTINS:
        assert eps[name].value.startswith("sjc_plugins."), eps[name].value
        assert eps[name].dist.version == metadata.version("sjc")


def test_builtins_load_through_entry_points(builtin_listing: tuple[int, str, str]) -> None:
    code, out, err = builtin_listing
    assert code == 0, err
    rows = listing(out)
    for ep_name, (kind, name, option) in BUILTINS.items():
        row = rows[(kind, name)]
        assert row["distribution"] == "sjc"
        assert row["version"] == metadata.version("sjc")
        assert row["module"].startswith("sjc_plugins.")
        assert row["description"] and "\n" not in row["description"]
        if option:
            assert option in {o["name"] for o in row["options"]}
    # The built-ins import cleanly: no warnings at all.
    assert json.loads(out)["warnings"] == []
    assert "warning" not in err


def test_duplicate_kind_and_name_is_an_error_naming_both_distributions(run_sjc, tmp_path: Path) -> None:
    alpha = write_dist(tmp_path / "a", "dup-alpha", "dup_alpha_plugin", plugin_source("priors", "twin"))
    beta = write_dist(tmp_path / "b", "dup-beta", "dup_beta_plugin", plugin_source("priors", "twin"), version="2.5")
    code, out, err = run_sjc("list-plugins", env=env_with(alpha, beta, SJC_PLUGINS="dup-alpha,dup-beta"))
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: prior 'twin' is registered twice: by ")
    assert "dup-alpha (dup_alpha_plugin)" in lines[0] and "dup-beta (dup_beta_plugin)" in lines[0]
    assert "SJC_PLUGINS" in lines[0]  # says how to get out of it


def test_sjc_plugins_resolves_a_duplicate(run_sjc, tmp_path: Path) -> None:
    alpha = write_dist(tmp_path / "a", "dup-alpha", "dup_alpha_plugin", plugin_source("priors", "twin", "from alpha"))
    beta = write_dist(tmp_path / "b", "dup-beta", "dup_beta_plugin", plugin_source("priors", "twin", "from beta"))
    # By distribution name...
    code, out, err = run_sjc("list-plugins", "--json", env=env_with(alpha, beta, SJC_PLUGINS="dup-beta"))
    assert code == 0, err
    rows = listing(out)
    assert list(rows) == [("priors", "twin")]
    assert rows[("priors", "twin")]["distribution"] == "dup-beta"
    assert rows[("priors", "twin")]["description"] == "from beta"
    # ...or by entry-point name.
    code, out, err = run_sjc("list-plugins", "--json", env=env_with(alpha, beta, SJC_PLUGINS=" dup_alpha_plugin "))
    assert code == 0, err
    assert listing(out)[("priors", "twin")]["distribution"] == "dup-alpha"


def test_a_plugin_that_fails_to_import_costs_one_warning_line(run_sjc, tmp_path: Path) -> None:
    broken = write_dist(
        tmp_path / "broken",
        "sjc-broken",
        "sjc_broken_plugin",
        'raise ImportError("needs libfoo\\nsecond line of the message")\n',
    )
    good = write_dist(tmp_path / "good", "sjc-good", "sjc_good_plugin", plugin_source("losses", "good-loss"))
    code, out, err = run_sjc("list-plugins", "--json", env=env_with(broken, good))
    assert code == 0, err
    assert "Traceback" not in err
    mentions = [line for line in err.splitlines() if "broken" in line]
    assert mentions == [
        "sjc: warning: plugin 'sjc_broken_plugin' (sjc-broken) failed to import: ImportError: needs libfoo"
    ]
    rows = listing(out)
    assert rows[("losses", "good-loss")]["distribution"] == "sjc-good"
    assert rows[("losses", "good-loss")]["version"] == "1.0"
    for kind, name, _ in BUILTINS.values():  # the others still load
        assert (kind, name) in rows
    assert len(json.loads(out)["warnings"]) == 1


def test_a_hook_that_raises_costs_a_warning(run_sjc, tmp_path: Path) -> None:
    source = (
        "from sjc_core.hookspecs import hookimpl\n\n"
        "@hookimpl\ndef register_fields(register):\n    raise KeyError('oops')\n"
    )
    bad = write_dist(tmp_path / "bad", "sjc-bad-hook", "sjc_bad_hook", source)
    good = write_dist(tmp_path / "good", "sjc-good", "sjc_good_plugin", plugin_source("fields", "good-field"))
    code, out, err = run_sjc(
        "list-plugins", "--json", env=env_with(bad, good, SJC_PLUGINS="sjc-bad-hook,sjc-good")
    )
    assert code == 0, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "sjc-bad-hook" in line] == [
        "sjc: warning: plugin 'sjc-bad-hook:sjc_bad_hook' failed to register fields: KeyError: 'oops'"
    ]
    assert list(listing(out)) == [("fields", "good-field")]


def test_a_hook_with_unknown_arguments_costs_a_warning(run_sjc, tmp_path: Path) -> None:
    source = (
        "from sjc_core.hookspecs import hookimpl\n\n"
        "@hookimpl\ndef register_priors(register, colour):\n    pass\n"
    )
    bad = write_dist(tmp_path / "bad", "sjc-bad-args", "sjc_bad_args", source)
    code, out, err = run_sjc("list-plugins", "--json", env=env_with(bad, SJC_PLUGINS="sjc-bad-args"))
    assert code == 0, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "sjc: warning: plugin 'sjc_bad_args' (sjc-bad-args) is not a valid sjc plugin:"
    )
    assert json.loads(out)["plugins"] == []


def test_sjc_plugins_restricts_what_loads(run_sjc, tmp_path: Path) -> None:
    good = write_dist(tmp_path / "good", "sjc-good", "sjc_good_plugin", plugin_source("priors", "good-prior"))
    # One built-in by entry-point name.
    code, out, err = run_sjc("list-plugins", "--json", env=env_with(good, SJC_PLUGINS="voxel"))
    assert code == 0, err
    assert list(listing(out)) == [("fields", "voxel")]
    # The built-in distribution by its name: every built-in, and not the third-party one.
    code, out, err = run_sjc("list-plugins", "--json", env=env_with(good, SJC_PLUGINS="sjc"))
    assert code == 0, err
    rows = listing(out)
    assert {(kind, name) for kind, name, _ in BUILTINS.values()} <= set(rows)
    assert {row["distribution"] for row in rows.values()} == {"sjc"}
    # Empty: nothing at all, and the text listing says so.
    code, out, err = run_sjc("list-plugins", env=env_with(good, SJC_PLUGINS=""))
    assert code == 0, err
    assert out.count("(none installed)") == 4  # priors, fields, losses, estimators
    assert err == ""


def test_a_third_party_estimator_is_listed_and_known_by_kind(run_sjc, tmp_path: Path) -> None:
    root = write_dist(tmp_path / "est", "sjc-my-estimator", "sjc_my_estimator", plugin_source("estimators", "mine", "my estimator"))
    code, out, err = run_sjc("list-plugins", "--kind", "estimators", "--json", env=env_with(root))
    assert code == 0, err
    rows = listing(out)
    assert rows[("estimators", "mine")]["distribution"] == "sjc-my-estimator"
    assert rows[("estimators", "mine")]["options"][0]["name"] == "strength"
    assert {("estimators", "paas"), ("estimators", "sds"), ("estimators", "ism")} <= set(rows)
    code, out, err = run_sjc("list-plugins", "--kind", "estimator", env=env_with(root))
    assert code == 2 and "(known: priors, fields, losses, estimators)" in err


def test_plugins_can_add_commands(run_sjc, tmp_path: Path) -> None:
    source = '''
import typer
from sjc_core.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    @cli.command("hello")
    def hello(who: str = "world") -> None:
        """Say hello (a plugin command)."""
        typer.echo(f"hello {who}")
'''
    root = write_dist(tmp_path / "cmd", "sjc-hello", "sjc_hello", source)
    env = env_with(root, SJC_PLUGINS="sjc-hello")
    code, out, err = run_sjc("hello", "--who", "plugins", env=env)
    assert (code, out) == (0, "hello plugins\n"), err
    code, out, _ = run_sjc("--help", env=env)
    assert code == 0 and "hello" in out and "a plugin command" in out
