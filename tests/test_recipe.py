"""Recipes: bad input through the real CLI, ``--set`` overrides, and the TOML writer.

Every bad-input case runs ``python -m sjc_core validate`` in a subprocess and checks the
exit code (2), the exact one-line message and that no traceback leaks out. The plugins are
the ``sjc-toy`` distribution of conftest (known options, no torch import: fast); the last
tests add the built-in plugins to check their own constraints.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from sjc_core.errors import SjcError
from sjc_core.recipes.recipe import apply_override, parse_value
from sjc_core.recipes.toml_out import dumps

GOOD = """\
name = "burger"
seed = 1
steps = 100
lr = 0.05
device = "cpu"

[prior]
name = "toy"
prompt = "a delicious hamburger"
guidance_scale = 100.0

[field]
name = "toy-grid"
grid_size = 16

[[losses]]
name = "toy-sparsity"
weight = 2.0

[[losses]]
name = "toy-smooth"
weight = 0.5

[camera]
radius = 1.5

[paas]
schedule = "random"
"""


@pytest.fixture
def recipe_file(tmp_path: Path):
    """``recipe_file(text) -> path`` of a recipe written in a fresh folder."""

    def write(text: str = GOOD, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def validate(run_sjc, toy_plugins_env):
    """``validate(path, *args, env=None) -> (code, stdout, stderr)`` with the toy plugins."""

    def run(path: Path | str, *args: str, env: dict | None = None):
        return run_sjc("validate", str(path), *args, env={**toy_plugins_env, **(env or {})})

    return run


def error_lines(code: int, out: str, err: str) -> list[str]:
    """The problem lines of a failed command, after checking the failure's shape."""
    assert code == 2, f"expected exit code 2, got {code}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err
    assert out == ""
    lines = err.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines), err
    return [line.removeprefix("error: ") for line in lines]


def test_the_good_recipe_validates(validate, recipe_file) -> None:
    code, out, err = validate(recipe_file())
    assert code == 0, err
    data = tomllib.loads(out)
    assert data["steps"] == 100 and data["prior"]["guidance_scale"] == 100.0
    assert [loss["name"] for loss in data["losses"]] == ["toy-sparsity", "toy-smooth"]


# --- files ------------------------------------------------------------------------------


def test_missing_file(validate, tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert error_lines(*validate(path)) == [f"{path}: no such file"]


def test_folder_instead_of_file(validate, tmp_path: Path) -> None:
    assert error_lines(*validate(tmp_path)) == [f"{tmp_path}: is a folder, expected a TOML recipe"]


def test_toml_syntax_error_names_line_and_column(validate, recipe_file) -> None:
    path = recipe_file('name = "x"\nseed = 1\nsteps 100\n')
    (line,) = error_lines(*validate(path))
    assert line.startswith(f"{path}: TOML syntax error: ")
    assert line.endswith("(at line 3, column 7)")


# --- plugins ------------------------------------------------------------------------------


def test_unknown_prior_lists_known_names_closest_first(validate, recipe_file) -> None:
    path = recipe_file(GOOD.replace('name = "toy"', 'name = "toy-x"'))
    assert error_lines(*validate(path)) == [f"{path}: prior.name: unknown prior 'toy-x' (known: toy-xl, toy)"]


def test_unknown_loss_lists_known_names_closest_first(validate, recipe_file) -> None:
    path = recipe_file(GOOD.replace('name = "toy-smooth"', 'name = "toy-sparse"'))
    assert error_lines(*validate(path)) == [
        f"{path}: losses.1.name: unknown loss 'toy-sparse' (known: toy-sparsity, toy-smooth)"
    ]


def test_unknown_field(validate, recipe_file) -> None:
    path = recipe_file(GOOD.replace('name = "toy-grid"', 'name = "hashgird"'))
    assert error_lines(*validate(path)) == [f"{path}: field.name: unknown field 'hashgird' (known: toy-grid)"]


def test_plugin_table_without_name(validate, recipe_file) -> None:
    path = recipe_file(GOOD.replace('name = "toy"\n', ""))
    assert error_lines(*validate(path)) == [
        f"{path}: prior.name: required: the prior plugin to use (known: toy, toy-xl)"
    ]


def test_missing_prior_table(validate, recipe_file) -> None:
    text = GOOD.replace('[prior]\nname = "toy"\nprompt = "a delicious hamburger"\nguidance_scale = 100.0\n', "")
    path = recipe_file(text)
    assert error_lines(*validate(path)) == [f"{path}: prior: required key missing"]


# --- types and ranges ---------------------------------------------------------------------


def test_wrong_type(validate, recipe_file) -> None:
    path = recipe_file(GOOD.replace("steps = 100", 'steps = "many"'))
    assert error_lines(*validate(path)) == [
        f"{path}: steps: Input should be a valid integer, unable to parse string as an integer (got 'many')"
    ]


def test_wrong_type_in_a_plugin_table(validate, recipe_file) -> None:
    path = recipe_file(GOOD.replace("guidance_scale = 100.0", 'guidance_scale = "high"'))
    assert error_lines(*validate(path)) == [
        f"{path}: prior.guidance_scale: Input should be a valid number, unable to parse string as a number (got 'high')"
    ]


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_steps_must_be_positive(validate, recipe_file, steps: str) -> None:
    path = recipe_file(GOOD.replace("steps = 100", f"steps = {steps}"))
    assert error_lines(*validate(path)) == [f"{path}: steps: Input should be greater than 0 (got {steps})"]


def test_negative_loss_weight(validate, recipe_file) -> None:
    path = recipe_file(GOOD.replace("weight = 0.5", "weight = -1.0"))
    assert error_lines(*validate(path)) == [
        f"{path}: losses.1.weight: Input should be greater than or equal to 0 (got -1.0)"
    ]


def test_guidance_scale_below_one(validate, recipe_file) -> None:
    path = recipe_file(GOOD.replace("guidance_scale = 100.0", "guidance_scale = 0.5"))
    assert error_lines(*validate(path)) == [
        f"{path}: prior.guidance_scale: Input should be greater than or equal to 1 (got 0.5)"
    ]


def test_device_must_be_auto_cpu_or_cuda(validate, recipe_file) -> None:
    path = recipe_file(GOOD.replace('device = "cpu"', 'device = "tpu"'))
    assert error_lines(*validate(path)) == [f"{path}: device: must be auto, cpu, cuda or cuda:N (got 'tpu')"]


def test_sigma_range_must_be_ordered(validate, recipe_file) -> None:
    path = recipe_file(GOOD.replace('schedule = "random"', "sigma_min = 2.0\nsigma_max = 1.0"))
    assert error_lines(*validate(path)) == [f"{path}: paas.sigma_min: 2.0 is above sigma_max 1.0"]


# --- unknown keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("steps = 100", "step = 100", "step: unknown key (did you mean 'steps'?)"),
        ("prompt =", "promt =", "prior.promt: unknown key (did you mean 'prompt'?)"),
        ("radius = 1.5", "raduis = 1.5", "camera.raduis: unknown key (did you mean 'radius'?)"),
        ("weight = 0.5", "wieght = 0.5", "losses.1.wieght: unknown key (did you mean 'weight'?)"),
        ("seed = 1", "colour = 1", "colour: unknown key"),
    ],
)
def test_unknown_key_suggests_the_intended_one(validate, recipe_file, old: str, new: str, message: str) -> None:
    path = recipe_file(GOOD.replace(old, new, 1))
    assert error_lines(*validate(path)) == [f"{path}: {message}"]


def test_several_problems_are_all_reported(validate, recipe_file) -> None:
    text = (
        GOOD.replace("steps = 100", "steps = 0")
        .replace("lr = 0.05", "lr = 0.05\nbatch = 4")
        .replace("guidance_scale = 100.0", "guidance_scale = 0.1")
        .replace('name = "toy-grid"', 'name = "voxle"')
        .replace("weight = 0.5", "weight = -2.0")
        .replace("radius = 1.5", "radius = -1.0")
    )
    path = recipe_file(text)
    assert sorted(error_lines(*validate(path))) == sorted(
        f"{path}: {message}"
        for message in [
            "steps: Input should be greater than 0 (got 0)",
            "batch: unknown key",
            "camera.radius: Input should be greater than 0 (got -1.0)",
            "prior.guidance_scale: Input should be greater than or equal to 1 (got 0.1)",
            "field.name: unknown field 'voxle' (known: toy-grid)",
            "losses.1.weight: Input should be greater than or equal to 0 (got -2.0)",
        ]
    )


# --- --set --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("steps", "--set 'steps': expected KEY=VALUE, e.g. --set prior.guidance_scale=50"),
        ("=5", "--set '=5': expected KEY=VALUE, e.g. --set prior.guidance_scale=50"),
        ("camera..radius=2", "--set 'camera..radius=2': expected KEY=VALUE, e.g. --set prior.guidance_scale=50"),
        ("steps.max=5", "--set steps.max: 'steps' is a value, not a table"),
        ("losses.7.weight=1", "--set losses.7: the recipe has 2 entries there"),
        ("losses.0=1", "--set losses.0: name a key inside the loss, e.g. losses.0.weight=1"),
    ],
)
def test_bad_set_syntax(validate, recipe_file, assignment: str, message: str) -> None:
    assert error_lines(*validate(recipe_file(), "--set", assignment)) == [message]


def test_set_is_typed_by_the_models(validate, recipe_file) -> None:
    code, out, err = validate(
        recipe_file(),
        *("--set", "steps=12"),
        *("--set", "name=2024"),  # a number for a string field stays a string
        *("--set", "prior.guidance_scale=7.5"),
        *("--set", "prior.view_dependent=false"),
        *("--set", "prior.prompt=a red car"),
        *("--set", "camera.fov_range=[30, 60]"),
        *("--set", "losses.0.weight=3"),
        *("--set", "losses.toy-smooth.weight=1e-2"),
        *("--set", "paas.sigma_min=0.1"),
    )
    assert code == 0, err
    data = tomllib.loads(out)
    assert data["steps"] == 12 and isinstance(data["steps"], int)
    assert data["name"] == "2024"
    assert data["prior"]["guidance_scale"] == 7.5
    assert data["prior"]["view_dependent"] is False
    assert data["prior"]["prompt"] == "a red car"
    assert data["camera"]["fov_range"] == [30.0, 60.0]
    assert [(loss["name"], loss["weight"]) for loss in data["losses"]] == [("toy-sparsity", 3.0), ("toy-smooth", 0.01)]
    assert data["paas"]["sigma_min"] == 0.1


def test_set_with_a_wrong_type_is_a_validation_error(validate, recipe_file) -> None:
    path = recipe_file()
    assert error_lines(*validate(path, "--set", "steps=abc", "--set", "prior.guidance_scale=0")) == [
        f"{path}: steps: Input should be a valid integer, unable to parse string as an integer (got 'abc')",
        f"{path}: prior.guidance_scale: Input should be greater than or equal to 1 (got '0')",
    ]


def test_set_by_loss_name_adds_a_missing_loss(validate, recipe_file) -> None:
    path = recipe_file(GOOD.split("[[losses]]")[0])
    code, out, err = validate(path, "--set", "losses.toy-smooth.weight=4")
    assert code == 0, err
    assert tomllib.loads(out)["losses"] == [{"name": "toy-smooth", "weight": 4.0}]


# --- the built-in plugins' own constraints -------------------------------------------------


def test_builtin_losses_reject_negative_weights(validate, recipe_file) -> None:
    text = GOOD.replace('"toy-sparsity"', '"emptiness"').replace('"toy-smooth"', '"center-depth"')
    text = text.replace("weight = 2.0", "weight = -1.0").replace("weight = 0.5", "weight = -0.5")
    path = recipe_file(text)
    lines = error_lines(*validate(path, env={"SJC_PLUGINS": None}))
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{path}: losses.0.weight: Input should be greater than or equal to 0")
    assert lines[1].startswith(f"{path}: losses.1.weight: Input should be greater than or equal to 0")


def test_builtin_field_checks_its_options(validate, recipe_file) -> None:
    path = recipe_file(GOOD.replace('"toy-grid"', '"voxel"').replace("grid_size = 16", "grid_size = 0\ngrid_sise = 3"))
    lines = error_lines(*validate(path, env={"SJC_PLUGINS": None}))
    assert len(lines) == 2, lines
    assert f"{path}: field.grid_sise: unknown key (did you mean 'grid_size'?)" in lines
    (size,) = [line for line in lines if "grid_sise" not in line]
    assert size.startswith(f"{path}: field.grid_size: ") and size.endswith("(got 0)")


# --- in-process units: --set parsing and the TOML writer ----------------------------------


def test_parse_value_keeps_scalars_as_text_for_the_models() -> None:
    assert parse_value("12") == "12"
    assert parse_value("true") == "true"
    assert parse_value("abc") == "abc"
    assert parse_value('"quoted"') == "quoted"
    assert parse_value("[1, 2.5]") == [1, 2.5]
    assert parse_value("{ a = 1 }") == {"a": 1}


def test_apply_override_addresses_losses_by_index_and_name() -> None:
    raw: dict = {"losses": [{"name": "emptiness", "weight": 1.0}]}
    apply_override(raw, "losses.0.weight=2")
    apply_override(raw, "losses.center-depth.weight=5")
    apply_override(raw, "camera.radius=2")
    assert raw == {
        "losses": [{"name": "emptiness", "weight": "2"}, {"name": "center-depth", "weight": "5"}],
        "camera": {"radius": "2"},
    }
    with pytest.raises(SjcError, match="is a value, not a table"):
        apply_override({"losses": ["emptiness"]}, "losses.0.weight=1")


def test_toml_writer_round_trips_awkward_values() -> None:
    data = {
        "text": 'quote " backslash \\ newline \n tab \t del \x7f unicode é',
        "floats": [0.05, 1e-05, 1e300, -0.0],
        "flags": [True, False],
        "spaced key": 1,
        "empty": [],
        "table": {"inner": {"deep": 1}, "n": 2},
        "tables": [{"x": 1, "sub": {"y": 2}}, {"x": 2}],
    }
    assert tomllib.loads(dumps(data)) == data


def test_toml_writer_leaves_out_none() -> None:
    assert tomllib.loads(dumps({"a": None, "b": {"c": None, "d": 1}})) == {"b": {"d": 1}}


def test_toml_writer_leaves_out_none_in_arrays_and_arrays_of_tables() -> None:
    data = {"xs": [1, None, 3], "only": [None], "losses": [{"name": "a", "w": None}, None, {"name": "b"}],
            "t": {"e": {"gone": None}}}
    assert tomllib.loads(dumps(data)) == {"xs": [1, 3], "only": [], "losses": [{"name": "a"}, {"name": "b"}],
                                          "t": {"e": {}}}


def test_toml_writer_round_trips_awkward_strings_in_keys_and_values() -> None:
    awkward = [
        'say "hi"', "back\\slash", "C:\\path\\", "line\nbreak", "crlf\r\n", "tab\tend", "nul \x00 esc \x1b del \x7f",
        "é ñ ß 中文", "emoji 😀 outside the BMP", "line separator \u2028 nbsp \xa0 c1 \x85", "'single' ''' \"\"\"",
        "", " ", "# not a comment", "[not.a.table]", "key = value",
    ]
    data = {"values": awkward, "table": {text or "empty": text for text in awkward}, "😀 key": {"é": 1}}
    text = dumps(data)
    assert tomllib.loads(text) == data
    assert dumps(tomllib.loads(text)) == text  # what validate prints, validate prints again unchanged


def test_toml_writer_refuses_what_toml_cannot_hold() -> None:
    with pytest.raises(TypeError):
        dumps({"a": object()})


def _without_none(value):
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value


SHIPPED_RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


@pytest.mark.parametrize("recipe", SHIPPED_RECIPES, ids=[p.stem for p in SHIPPED_RECIPES])
def test_toml_writer_round_trips_every_shipped_recipe(recipe: Path) -> None:
    """load -> resolved -> dumps -> parse gives the resolved data back (None left out)."""
    from sjc_core.plugins import load_registry
    from sjc_core.recipes.recipe import load_recipe

    resolved = load_recipe(recipe, load_registry(warn=lambda message: None)).resolved()
    assert tomllib.loads(dumps(resolved)) == _without_none(resolved)


# --- values no run can use, keys in the wrong table, long values ------------------------------


def test_a_key_in_the_wrong_table_suggests_its_full_path(validate, recipe_file) -> None:
    path = recipe_file()
    assert error_lines(*validate(path, "--set", "test_frames=2", "--set", "prior.radius=2")) == [
        f"{path}: test_frames: unknown key (did you mean 'camera.test_frames'?)",
        f"{path}: prior.radius: unknown key (did you mean 'camera.radius'?)",
    ]


def test_core_values_are_finite_strict_and_bounded(validate, recipe_file) -> None:
    text = (
        GOOD.replace("seed = 1", "seed = true")
        .replace("steps = 100", "steps = 1_000_000_000_000")
        .replace("radius = 1.5", "radius = inf")
        .replace('name = "burger"', 'name = "../../tmp/x"')
    )
    path = recipe_file(text)
    assert sorted(error_lines(*validate(path))) == sorted(
        f"{path}: {message}"
        for message in [
            "seed: Input should be a valid integer, not true or false (got True)",
            "steps: Input should be less than or equal to 10000000 (got 1000000000000)",
            "camera.radius: Input should be a finite number (got inf)",
            (
                "name: must be one folder name: no '/' or '\\' (the run folder is OUTPUT/NAME-seedSEED) "
                "(got '../../tmp/x')"
            ),
        ]
    )


def test_a_plugin_model_with_plain_types_still_gets_no_nan_and_no_bool_numbers(validate, recipe_file) -> None:
    """The toy plugins use plain float/int/bool: the core re-checks what their models let through."""
    text = GOOD.replace("guidance_scale = 100.0", "guidance_scale = inf\nresolution = true\nview_dependent = 1")
    path = recipe_file(text)
    assert sorted(error_lines(*validate(path))) == sorted(
        f"{path}: {message}"
        for message in [
            "prior.guidance_scale: Input should be a finite number (got inf)",
            "prior.resolution: Input should be a valid number, not true or false (got True)",
            "prior.view_dependent: Input should be a valid boolean: true or false (got 1)",
        ]
    )


def test_long_values_are_cut_and_deep_nesting_is_one_line(validate, recipe_file) -> None:
    path = recipe_file(GOOD.replace('device = "cpu"', 'device = "' + "d" * 1_000_000 + '"'))
    (line,) = error_lines(*validate(path))
    assert line.startswith(f"{path}: device: must be auto, cpu, cuda or cuda:N (got 'ddd")
    assert line.endswith("…)") and len(line) < len(str(path)) + 140
    path = recipe_file(GOOD + "\n[extra]\nx = " + "[" * 1000 + "]" * 1000 + "\n", name="deep.toml")
    assert error_lines(*validate(path)) == [
        f"{path}: tables or arrays nested too deeply (at most 32 levels)"
    ]
    path = recipe_file(GOOD.replace("grid_size = 16", "grid_size = " + "[" * 40 + "]" * 40), name="deeper.toml")
    assert error_lines(*validate(path)) == [f"{path}: field.grid_size: tables or arrays nested more than 32 levels deep"]


def test_set_values_nested_too_deeply_are_one_line() -> None:
    with pytest.raises(SjcError, match="nested too deeply") as caught:
        parse_value("[" * 1000 + "]" * 1000)
    assert len(caught.value.problems) == 1 and len(caught.value.problems[0]) < 200
    with pytest.raises(SjcError, match="nested more than 32 levels deep"):
        parse_value("[" * 40 + "]" * 40)
    with pytest.raises(SjcError, match="expected KEY=VALUE") as caught:
        apply_override({}, "k" * 1_000_000)
    assert len(caught.value.problems[0]) < 200
