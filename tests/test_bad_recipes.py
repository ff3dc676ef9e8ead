"""Malformed recipes, generated: every one is refused in one line that names its field.

A valid recipe for each built-in plugin is mutated field by field, with values read off the
options models themselves: wrong types, NaN and infinities, huge and negative numbers,
bools where numbers belong (and numbers where switches belong), empty, huge and NUL
strings, unknown keys and deep arrays. Each mutant must raise :class:`SjcError` from
validation or from ``check_ready`` (what ``sjc validate`` runs), with one line per problem
that starts ``SOURCE: <dotted.path>``, echoes no more than a cut of the value, and writes
nothing. A handful of reproductions then go through the real CLI (``sjc run``,
``sjc validate``, ``sjc sample``): exit 2, one line, no traceback, no run folder.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import operator
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from conftest import REPO, sjc_env, write_sample_images
from sjc_core.errors import SjcError
from sjc_core.plugins import load_registry
from sjc_core.recipes.model import CameraConfig, LogConfig, PaasConfig, RecipeModel
from sjc_core.recipes.preflight import check_ready
from sjc_core.recipes.recipe import validate_recipe

SOURCE = "bad.toml"
HUGE_TEXT = "x" * 1_000_000
LINE_LIMIT = 400  # an error line echoes at most a cut of the value (60 characters)
NESTED = 40  # deeper than the 32 levels a recipe may nest


@pytest.fixture(scope="module")
def registry():
    return load_registry(warn=lambda message: None)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad-recipes")
    write_sample_images(folder / "images")
    return folder


def base_recipe(workspace: Path, prior: dict[str, Any], field: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "base",
        "seed": 1,
        "steps": 10,
        "lr": 0.05,
        "output": str(workspace / "runs"),
        "device": "cpu",
        "view_every": 5,
        "log_every": 5,
        "checkpoint_every": 5,
        "prior": prior,
        "field": field,
        "losses": [{"name": "emptiness", "weight": 10.0}, {"name": "center-depth", "weight": 1.0}],
        "camera": {"radius": 1.5, "test_frames": 4, "resolution": 16},
        "paas": {"schedule": "random", "n_noise": 1},
    }


def bases(workspace: Path) -> dict[str, dict[str, Any]]:
    """One valid recipe per built-in prior and field (validation and check_ready pass)."""
    empirical = {"name": "empirical", "images": "images", "resolution": 16}
    return {
        "empirical+voxel": base_recipe(workspace, empirical, {"name": "voxel", "grid_size": 12}),
        "empirical+hashgrid": base_recipe(workspace, empirical, {"name": "hashgrid", "grid_size": 12}),
        "stable-diffusion": base_recipe(workspace, {"name": "stable-diffusion", "prompt": "a rose"}, {"name": "voxel"}),
        "pixel": base_recipe(workspace, {"name": "ffhq"}, {"name": "voxel"}),
    }


# ----------------------------------------------------------------------------- the mutations


def _strip(annotation: Any) -> Any:
    """The annotation without Annotated metadata and without `| None`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _strip(args[0])
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return _strip(rest[0]) if len(rest) == 1 else functools.reduce(operator.or_, rest)
    return annotation


def _lower_bound(info: Any) -> float | None:
    for meta in info.metadata:
        for attr in ("ge", "gt"):
            value = getattr(meta, attr, None)
            if value is not None:
                return float(value)
    return None


def _min_length(info: Any) -> int:
    for meta in info.metadata:
        value = getattr(meta, "min_length", None)
        if value is not None:
            return int(value)
    return 0


def deep(value: Any, depth: int = NESTED) -> Any:
    for _ in range(depth):
        value = [value]
    return value


WRONG_FOR_ANY = [{"a": 1}, deep(1)]
NUMBER_MUTANTS = ["abc", True, False, math.nan, math.inf, -math.inf, 1e300, -1e300, 10**30, -(10**30)]
INT_EXTRA = [2.5, "2.5", [1]]
FLOAT_EXTRA = ["nan", "inf", "-1e400", [1.0]]
BOOL_MUTANTS = [1, 0, 2.5, "abc", "yes", [True], math.nan]
TEXT_MUTANTS = [7, 1.5, True, HUGE_TEXT, "a\x00b", ["a"]]
LITERAL_MUTANTS = ["abc", "", 7, True, HUGE_TEXT, "a\x00b"]
PAIR_MUTANTS = ["abc", [1.0], [math.nan, 1.0], [1.0, math.inf], [-1e300, 1e300], [True, 1.0], [1.0, 2.0, 3.0]]


def mutants_for(name: str, info: Any) -> list[Any]:
    """Values that must be refused for this field, read off its annotation and bounds."""
    kind = _strip(info.annotation)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    values: list[Any] = list(WRONG_FOR_ANY)
    if name == "grid_size":
        return values + ["abc", True, 1, 2.5, 10**6, [2, 2], [True, 2, 2], [2000, 2, 2], [2, 2, "x"], math.nan]
    if name == "scale":  # float | "auto"
        return values + ["abc", True, math.nan, math.inf, 0, -1.0, 1e300]
    if name == "lora":  # a list of paths or {path, scale} tables
        return values + ["abc", 7, [7], [{"path": 7}], [{"path": ""}], [{"scale": 1.0}], [{"path": "a", "scale": math.nan}],
                         [{"path": "a", "scale": 1e300}], [{"path": "a", "extra": 1}], [HUGE_TEXT], ["a\x00b"],
                         ["a.safetensors"] * 1000]
    if name == "attention_slicing":  # bool | "auto" | "max" | int
        return values + ["abc", 0, -2, 10**6, 2.5, math.nan, ""]
    if kind is bool:
        return values + BOOL_MUTANTS
    if kind is int:
        values += NUMBER_MUTANTS + INT_EXTRA
    elif kind is float:
        values += NUMBER_MUTANTS + FLOAT_EXTRA
    elif kind is str:
        values += TEXT_MUTANTS + ([""] if _min_length(info) >= 1 else [])
        return values
    elif origin is typing.Literal:
        return values + LITERAL_MUTANTS
    elif origin is tuple and all(_strip(a) is float for a in args):
        return values[:1] + PAIR_MUTANTS
    else:
        raise AssertionError(f"no mutations for {name}: {kind}")
    if (_lower_bound(info) or -1) >= 0:
        values.append(-1)
    return values


def model_cases(model: type[BaseModel], where: str, prefix: str) -> list[tuple[str, str, Any]]:
    """(table, dotted key, value) for every field of ``model``, plus an unknown key."""
    cases = [(where, f"{prefix}{name}", value) for name, info in model.model_fields.items()
             for value in mutants_for(name, info)]
    return cases + [(where, f"{prefix}bogus_key_xyz", 1)]


def corpus(registry) -> list[tuple[str, str, Any]]:
    """(base recipe, dotted key, value): a few hundred malformed recipes."""
    cases: list[tuple[str, str, Any]] = []
    top = {name: info for name, info in RecipeModel.model_fields.items()
           if name not in ("prior", "field", "losses", "camera", "paas", "log")}
    for name, info in top.items():
        cases += [("empirical+voxel", name, value) for value in mutants_for(name, info)]
    cases += [("empirical+voxel", "bogus_key_xyz", 1), ("empirical+voxel", "test_frames", 2)]
    cases += [("empirical+voxel", key, value) for key in ("prior", "field", "camera", "paas")
              for value in ("abc", 7, [1], deep({}))]
    cases += [("empirical+voxel", "losses", value) for value in ("abc", 7, {"a": 1}, [{"name": "emptiness"}] * 65)]
    cases += model_cases(CameraConfig, "empirical+voxel", "camera.")
    cases += model_cases(PaasConfig, "empirical+voxel", "paas.")
    cases += model_cases(LogConfig, "empirical+voxel", "log.")
    plugin = {
        ("priors", "empirical"): ("empirical+voxel", "prior."),
        ("fields", "voxel"): ("empirical+voxel", "field."),
        ("fields", "hashgrid"): ("empirical+hashgrid", "field."),
        ("priors", "stable-diffusion"): ("stable-diffusion", "prior."),
        ("priors", "ffhq"): ("pixel", "prior."),
        ("losses", "emptiness"): ("empirical+voxel", "losses.0."),
        ("losses", "center-depth"): ("empirical+voxel", "losses.1."),
    }
    for (kind, name), (where, prefix) in plugin.items():
        cases += model_cases(registry.get(kind, name).options, where, prefix)
    return cases


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node: Any = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[parts[-1]] = value


def problems_of(raw: dict[str, Any], registry, base_dir: Path) -> list[str]:
    """The problem lines `sjc validate` would print for ``raw`` (none when it is fine)."""
    try:
        check_ready(validate_recipe(copy.deepcopy(raw), registry, base_dir=base_dir, source=SOURCE))
    except SjcError as exc:
        return exc.problems
    return []


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 40 else text[:37] + "..."


# ----------------------------------------------------------------------------- the corpus


def test_the_bases_are_valid(registry, workspace: Path) -> None:
    for name, raw in bases(workspace).items():
        assert problems_of(raw, registry, workspace) == [], name


def test_every_malformed_recipe_is_one_line_naming_its_field(registry, workspace: Path, monkeypatch) -> None:
    monkeypatch.chdir(workspace)
    cases = corpus(registry)
    assert len(cases) >= 500, len(cases)
    recipes = bases(workspace)
    failures = []
    for where, key, value in cases:
        raw = copy.deepcopy(recipes[where])
        set_key(raw, key, value)
        problems = problems_of(raw, registry, workspace)
        if not problems:
            failures.append(f"{where} {key}={shown(value)}: accepted")
            continue
        for line in problems:
            if "\n" in line or "\r" in line or len(line) > LINE_LIMIT or not line.startswith(f"{SOURCE}: {key}"):
                failures.append(f"{where} {key}={shown(value)}: {shown(line)} (of {len(problems)})")
        if len(problems) > 2:
            failures.append(f"{where} {key}={shown(value)}: {len(problems)} lines for one mistake: {problems}")
    assert not failures, f"{len(failures)} of {len(cases)} malformed recipes:\n" + "\n".join(failures[:40])
    assert not (workspace / "runs").exists() and not (workspace / "runs").is_symlink()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        # Tracebacks at run time once validate had accepted them.
        ("camera.radius", math.inf, "camera.radius: Input should be a finite number"),
        ("field.box_half", math.inf, "field.box_half: Input should be a finite number"),
        ("paas.sigma_max", math.inf, "paas.sigma_max: Input should be a finite number"),
        ("camera.azimuth_range", [0.0, math.inf], "camera.azimuth_range.1: Input should be a finite number"),
        ("field.grid_size", 100000, "field.grid_size: every size must be 2..1024 (got 100000)"),
        ("field.grid_size", [1024, 1024, 1024], "at most 134,217,728 voxels"),
        ("steps", 10**12, "steps: Input should be less than or equal to 10000000"),
        ("seed", 2**64, "seed: Input should be less than or equal to 9223372036854775807"),
        ("camera.resolution", 100000, "camera.resolution: Input should be less than or equal to 4096"),
        ("paas.n_noise", 10**6, "paas.n_noise: Input should be less than or equal to 256"),
        ("field.step_ratio", 1e-9, "field.step_ratio: Input should be greater than or equal to 0.001"),
        ("field.step_ratio", 0.001, "field.step_ratio: 0.001 with grid_size 12 gives about 20,785 samples per ray"),
        ("field.bg_texture_size", 10**6, "field.bg_texture_size: Input should be less than or equal to 4096"),
        ("name", "n" * 5000, "name: String should have at most 100 characters"),
        ("name", "a\x00b", "name: must not contain the control character '\\x00'"),
        # Accepted but wrong.
        ("seed", True, "seed: Input should be a valid integer, not true or false"),
        ("field.density_shift", math.nan, "field.density_shift: Input should be a finite number"),
        ("field.step_ratio", math.inf, "field.step_ratio: Input should be a finite number"),
        ("name", "../../tmp/x", "name: must be one folder name"),
        ("name", "/tmp/x", "name: must be one folder name"),
        ("name", "a/b", "name: must be one folder name"),
        ("name", "..", "name: must be a folder name, not '.' or '..'"),
        ("name", "a\nb", "name: must not contain the control character '\\n'"),
        ("camera.test_frames", 1e9, "camera.test_frames: Input should be less than or equal to 10000"),
        ("steps", "1e3", "steps: Input should be a valid integer"),
        ("camera.follow_prior", 1, "camera.follow_prior: Input should be a valid boolean"),
        # What run rejected but validate passed.
        ("prior.images", "no-such-folder", "prior.images: "),
        # Where a key belongs.
        ("test_frames", 2, "test_frames: unknown key (did you mean 'camera.test_frames'?)"),
        ("prior.grid_size", 2, "prior.grid_size: unknown key (did you mean 'field.grid_size'?)"),
    ],
)
def test_reproductions(registry, workspace: Path, key: str, value: Any, expected: str) -> None:
    raw = bases(workspace)["empirical+voxel"]
    set_key(raw, key, value)
    problems = problems_of(raw, registry, workspace)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{SOURCE}: ") and expected in problems[0], problems[0]
    assert len(problems[0]) <= LINE_LIMIT


def test_output_naming_a_file_or_below_a_file(registry, workspace: Path) -> None:
    afile = workspace / "a-file.txt"
    afile.write_text("not a folder")
    for output, expected in ((afile, "output: is a file, not a folder"), (afile / "runs", "output: cannot be a folder")):
        raw = bases(workspace)["empirical+voxel"]
        raw["output"] = str(output)
        (line,) = problems_of(raw, registry, workspace)
        assert line.startswith(f"{SOURCE}: {expected}"), line


def test_images_folder_without_images(registry, workspace: Path) -> None:
    (workspace / "empty").mkdir(exist_ok=True)
    raw = bases(workspace)["empirical+voxel"]
    raw["prior"]["images"] = "empty"
    (line,) = problems_of(raw, registry, workspace)
    assert line.startswith(f"{SOURCE}: prior.images: ") and "no images" in line
    raw["prior"]["images"], raw["prior"]["view_conditioning"] = "images", "kernel"
    (line,) = problems_of(raw, registry, workspace)
    assert line.startswith(f"{SOURCE}: prior.view_conditioning: ") and "needs cameras" in line


def test_a_posed_folder_is_checked_without_reading_its_images(registry, workspace: Path) -> None:
    posed = workspace / "posed"
    posed.mkdir(exist_ok=True)
    pose = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2], [0, 0, 0, 1]]
    frames = json.dumps([{"file_path": "./r_0", "transform_matrix": pose}])
    (posed / "transforms.json").write_text(f'{{"camera_angle_x": 0.7, "frames": {frames}}}')
    raw = bases(workspace)["empirical+voxel"]
    raw["prior"]["images"] = "posed"
    (line,) = problems_of(raw, registry, workspace)
    assert line == f"{SOURCE}: prior.images: {posed / './r_0'}: image not found (frames[0].file_path in transforms.json)"
    (posed / "transforms.json").write_text('{"camera_angle_x": 0.7, "frames": [')
    (line,) = problems_of(raw, registry, workspace)
    assert line.startswith(f"{SOURCE}: prior.images: {posed / 'transforms.json'}: invalid JSON at line 1")


def test_a_megabyte_of_invalid_text_is_echoed_as_a_cut(registry, workspace: Path) -> None:
    raw = bases(workspace)["empirical+voxel"]
    raw["device"] = HUGE_TEXT
    (line,) = problems_of(raw, registry, workspace)
    assert line.startswith(f"{SOURCE}: device: must be auto, cpu, cuda or cuda:N (got 'xxx")
    assert line.endswith("…)") and len(line) < 160


def test_a_third_party_model_without_the_value_types_cannot_let_nan_or_bools_through(registry, workspace) -> None:
    """The core re-checks any plugin's validated values (the toy plugins use plain float/int/bool)."""
    from pydantic import ConfigDict

    from sjc_core.plugins import PluginInfo

    class Plain(BaseModel):
        model_config = ConfigDict(extra="forbid")
        gain: float = 1.0
        count: int = 1
        flag: bool = True
        pair: tuple[float, float] = (0.0, 1.0)

    info = PluginInfo("losses", "plain", lambda options, ctx: None, "", Plain, "test", "0", "test")
    registry = copy.copy(registry)
    registry.entries = {**registry.entries, ("losses", "plain"): info}
    for key, value, message in [
        ("gain", math.nan, "losses.2.gain: Input should be a finite number"),
        ("count", True, "losses.2.count: Input should be a valid number, not true or false"),
        ("flag", 1, "losses.2.flag: Input should be a valid boolean"),
        ("pair", [0.0, math.inf], "losses.2.pair.1: Input should be a finite number"),
    ]:
        raw = bases(workspace)["empirical+voxel"]
        raw["losses"].append({"name": "plain", key: value})
        (line,) = problems_of(raw, registry, workspace)
        assert line.startswith(f"{SOURCE}: {message}"), line


# ----------------------------------------------------------------------------- through the CLI


def cli(args: list[str], cwd: Path, block: tuple[str, ...] = (), torch_report: Path | None = None) -> tuple[int, str, str]:
    """``sjc ARGS`` in a fresh interpreter; ``block`` makes those packages not importable;
    ``torch_report`` receives "True" or "False" at exit: whether torch was imported."""
    code = (
        "import atexit, sys\n"
        + (f"atexit.register(lambda: open({str(torch_report)!r}, 'w').write(str('torch' in sys.modules)))\n"
           if torch_report else "")
        + f"BLOCKED = {block!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from sjc_core.cli import main\n"
        f"sys.argv = ['sjc', *{[str(a) for a in args]!r}]\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=sjc_env(), cwd=cwd, timeout=300, check=False
    )
    return proc.returncode, proc.stdout, proc.stderr


def one_line(code: int, err: str) -> str:
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0].removeprefix("error: ")


def test_cli_run_refuses_bad_values_before_anything_is_written(tmp_path: Path) -> None:
    write_sample_images(tmp_path / "images")
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'name = "r"\nsteps = 2\ndevice = "cpu"\n[prior]\nname = "empirical"\nimages = "images"\nresolution = 16\n'
        '[field]\nname = "voxel"\ngrid_size = 8\n'
    )
    line = one_line(*cli(["run", recipe, "--set", "name=../../x"], tmp_path)[::2])
    assert line.startswith(f"{recipe}: name: must be one folder name")
    line = one_line(*cli(["run", recipe, "--set", "test_frames=2"], tmp_path)[::2])
    assert line == f"{recipe}: test_frames: unknown key (did you mean 'camera.test_frames'?)"
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "x-seed0").exists()


def test_cli_validate_deep_toml_and_missing_images(tmp_path: Path) -> None:
    deep_file = tmp_path / "deep.toml"
    deep_file.write_text("a = " + "[" * 1000 + "]" * 1000 + "\n")
    line = one_line(*cli(["validate", deep_file], tmp_path)[::2])
    assert line.startswith(f"{deep_file}: ") and "nested too deeply" in line
    recipe = tmp_path / "r.toml"
    recipe.write_text('[prior]\nname = "empirical"\nimages = "missing-images"\n')
    line = one_line(*cli(["validate", recipe], tmp_path)[::2])
    assert line == f"{recipe}: prior.images: {tmp_path / 'missing-images'}: no such folder"


def test_stable_diffusion_without_the_extras_is_one_line_with_the_install_command(tmp_path: Path) -> None:
    blocked = ("huggingface_hub", "diffusers", "transformers")
    rose = REPO / "recipes" / "rose.toml"
    lines = {}
    for args in (["run", rose], ["validate", rose],
                 ["sample", "--prior", "stable-diffusion", "--set", "prior.prompt=a rose", "--out", tmp_path / "o"]):
        report = tmp_path / f"torch-{args[0]}.txt"
        code, _, err = cli(args, tmp_path, blocked, torch_report=report)
        line = lines[args[0]] = one_line(code, err)
        assert line.endswith('pip install -e ".[diffusers]"') and "prior.name: " in line, line
        if args[0] != "sample":  # run refuses as validate does: before torch is imported
            assert report.read_text() == "False", args
    # the same words from run and validate: the recipe's file, one package list, the README's install line
    assert lines["run"] == lines["validate"]
    assert lines["run"] == (
        f"{rose}: prior.name: this prior needs the diffusers extra (diffusers, transformers, huggingface_hub "
        'not installed): pip install -e ".[diffusers]"'
    )
    assert not (tmp_path / "runs").exists() and not (tmp_path / "o").exists()
