"""TOML recipes: pydantic models, ``--set`` overrides, and one-line-per-problem errors.

A recipe names its prior, field and losses; each of those tables is validated by the
plugin's own options model, so a mistake reads ``prior.guidance_scale: Input should be a
valid number`` and every problem in a file is reported at once.

Every value a recipe can hold is checked to be one a machine can honour before anything
runs: numbers are finite (no NaN or Inf), whole numbers are never ``true``/``false``,
switches are never numbers, sizes and counts have upper limits (stated in each field's
description and in the error), names are one folder name, and paths are paths. The value
types below (:data:`Int`, :data:`Float`, :data:`Flag`, :data:`Text`, :data:`Line`,
:data:`PathText`) carry those rules; the core models and every built-in plugin's options
use them, and :func:`validate_recipe` re-checks any plugin's validated values for NaN,
Inf and bool/number coercions, so a third-party model without them cannot let one through.

:func:`check_ready` (in :mod:`sjc_core.preflight`, re-exported here) runs the checks
``sjc run`` would make when it builds the plugins (folders that must exist, extras that
must be installed, weights that must be present), through each options model's optional
``preflight(ctx)`` method; ``sjc validate`` calls it. The value types live in
:mod:`sjc_core.values`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import (
    BaseModel,
    ValidationError,
    field_validator,
    model_validator,
)

from sjc_core.errors import SjcError
from sjc_core.estimator_recipe import TABLE as ESTIMATOR_TABLE
from sjc_core.estimator_recipe import (
    choose_estimator,
    estimator_keys,
    resolve_tables,
    switch_estimator,
    without_table,
)
from sjc_core.plugins import SINGULAR, PluginInfo, Registry
from sjc_core.recipe_errors import (  # noqa: F401
    coercion_problems,
    dotted_key,
    format_errors,
    shown_key,
    suggest_key,
    with_suggestion,
)
from sjc_core.values import (  # noqa: F401 (also re-exported: plugins import them from here)
    error_line,
    one_line,
    ECHO_LIMIT,
    Flag,
    Float,
    Int,
    Line,
    MAX_AZIMUTH,
    MAX_DEPTH,
    MAX_FPS,
    MAX_LOSSES,
    MAX_LR,
    MAX_NAME_BYTES,
    MAX_NAME_LENGTH,
    MAX_N_NOISE,
    MAX_PATH_LENGTH,
    MAX_RADIUS,
    MAX_RENDER_SIZE,
    MAX_SEED,
    MAX_SIGMA,
    MAX_SPIRAL_ROUNDS,
    MAX_STEPS,
    MAX_TEST_FRAMES,
    PathText,
    STRICT_CONFIG,
    Text,
    _control_character,
    bounded,
    shorten,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _run_name(value: str) -> str:
    bad = _control_character(value)
    if bad is not None:
        raise ValueError(f"must not contain the control character {bad!r}")
    if "/" in value or "\\" in value:
        raise ValueError("must be one folder name: no '/' or '\\' (the run folder is OUTPUT/NAME-seedSEED)")
    if value in (".", ".."):
        raise ValueError("must be a folder name, not '.' or '..'")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ValueError(f"must be at most {MAX_NAME_BYTES} bytes in UTF-8")
    return value


def check_output_folder(value: str) -> str:
    """``output`` must be able to become a folder: neither it nor a folder above it is a file."""
    path = Path(value)
    for place in (path, *path.parents):
        try:
            if place.exists() and not place.is_dir():
                raise ValueError("is a file, not a folder" if place == path else f"cannot be a folder: {shorten(str(place))} is a file")
        except OSError:  # unreadable: leave it to the run, which reports it in one line
            return value
    return value


def _ordered_pair(value: tuple[float, float], low_limit: float, high_limit: float, *, open_ends: bool = False) -> None:
    low, high = value
    inside = (low_limit < low and high < high_limit) if open_ends else (low_limit <= low and high <= high_limit)
    if not inside:
        left, right = ("(", ")") if open_ends else ("[", "]")
        raise ValueError(f"each end must lie in {left}{low_limit:g}, {high_limit:g}{right} degrees (got [{low:g}, {high:g}])")
    if low > high:
        raise ValueError(f"low end {low:g} is above high end {high:g}")


class CameraConfig(BaseModel):
    """Training-view sampler and test path; defaults are the reference's."""

    model_config = STRICT_CONFIG

    radius: Float = pydantic.Field(
        1.5, gt=0, le=MAX_RADIUS, description=f"distance of training cameras from the origin (at most {MAX_RADIUS:g})"
    )
    fov_range: tuple[Float, Float] = pydantic.Field(
        (40.0, 70.0), description="horizontal field of view drawn uniformly in this range (degrees, inside (0, 180))"
    )
    azimuth_range: tuple[Float, Float] = pydantic.Field(
        (0.0, 360.0), description=f"azimuth range (degrees, each end within [-{MAX_AZIMUTH:g}, {MAX_AZIMUTH:g}])"
    )
    polar_range: tuple[Float, Float] = pydantic.Field(
        (0.0, 100.0), description="range of the polar draw v (degrees, within [0, 180]); polar angle = arccos(1 - 2v/pi)"
    )
    overhead_below: Float = pydantic.Field(
        30.0, ge=0, le=180, description="v below this is labelled 'overhead' (degrees, 0..180)"
    )
    follow_prior: Flag = pydantic.Field(
        True, description="use the prior's own camera radius and field of view when it has posed images"
    )
    poses: Literal["sphere", "prior"] = pydantic.Field(
        "sphere",
        description="sphere: draw training cameras on the sphere (radius, azimuth and polar ranges); prior: draw "
        "among the prior's own cameras (a posed image set), each with the data's field of view",
    )
    resolution: Int | None = pydantic.Field(
        None, gt=0, le=MAX_RENDER_SIZE, description=f"render size (at most {MAX_RENDER_SIZE}); default: the prior's resolution"
    )
    test_path: Literal["spiral", "orbit"] = pydantic.Field("spiral", description="turntable path")
    test_frames: Int = pydantic.Field(
        100,
        gt=0,
        le=MAX_TEST_FRAMES,
        description=f"frames of the turntable video (at most {MAX_TEST_FRAMES}: every frame is held in memory until "
        "the video is written)",
    )
    test_fov: Float = pydantic.Field(60.0, gt=0, lt=180, description="field of view of test views (degrees)")
    spiral_rounds: Int = pydantic.Field(
        3, gt=0, le=MAX_SPIRAL_ROUNDS, description=f"rounds of the spiral test path (at most {MAX_SPIRAL_ROUNDS})"
    )
    orbit_elevation: Float = pydantic.Field(20.0, ge=-90, le=90, description="elevation of the orbit path (degrees)")
    fps: Int = pydantic.Field(20, gt=0, le=MAX_FPS, description=f"frames per second of videos (at most {MAX_FPS})")

    @field_validator("fov_range")
    @classmethod
    def _fov_inside(cls, value: tuple[float, float]) -> tuple[float, float]:
        _ordered_pair(value, 0.0, 180.0, open_ends=True)
        return value

    @field_validator("azimuth_range")
    @classmethod
    def _azimuth_inside(cls, value: tuple[float, float]) -> tuple[float, float]:
        _ordered_pair(value, -MAX_AZIMUTH, MAX_AZIMUTH)
        return value

    @field_validator("polar_range")
    @classmethod
    def _polar_inside(cls, value: tuple[float, float]) -> tuple[float, float]:
        _ordered_pair(value, 0.0, 180.0)
        return value


class PaasConfig(BaseModel):
    """Perturb-and-average scoring and the sigma schedule."""

    model_config = STRICT_CONFIG

    schedule: Literal["random", "annealed"] = pydantic.Field(
        "random",
        description="random: uniform draw from the ladder; annealed: large to small over training",
    )
    sigma_min: Float | None = pydantic.Field(
        None, gt=0, le=MAX_SIGMA, description=f"lowest sigma (at most {MAX_SIGMA:g}); default: the prior's default range"
    )
    sigma_max: Float | None = pydantic.Field(
        None, gt=0, le=MAX_SIGMA, description=f"highest sigma (at most {MAX_SIGMA:g}); default: the prior's default range"
    )
    var_red: Flag = pydantic.Field(True, description="Eq. 16 (subtract the clean render) instead of Eq. 15")
    n_noise: Int = pydantic.Field(
        1, gt=0, le=MAX_N_NOISE, description=f"noises averaged per step, batched through the prior (at most {MAX_N_NOISE})"
    )

    @model_validator(mode="after")
    def _ordered(self) -> "PaasConfig":
        if self.sigma_min is not None and self.sigma_max is not None and self.sigma_min > self.sigma_max:
            raise ValueError(f"sigma_min: {self.sigma_min} is above sigma_max {self.sigma_max}")
        return self


class RecipeModel(BaseModel):
    """The top level of a recipe. Plugin tables are checked against their plugin's model."""

    model_config = STRICT_CONFIG

    name: Line = pydantic.Field(
        "sjc",
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        description=f"run name, one folder name (no '/', at most {MAX_NAME_LENGTH} characters); "
        "the run folder is OUTPUT/NAME-seedSEED",
    )
    seed: Int = pydantic.Field(0, ge=0, le=MAX_SEED, description="seed of every random draw (0 .. 2**63 - 1)")
    steps: Int = pydantic.Field(10000, gt=0, le=MAX_STEPS, description=f"optimisation steps (at most {MAX_STEPS:,})")
    lr: Float = pydantic.Field(0.05, gt=0, le=MAX_LR, description=f"base learning rate (Adamax; at most {MAX_LR:g})")
    output: PathText = pydantic.Field(
        "runs", min_length=1, max_length=MAX_PATH_LENGTH, description="folder that receives run folders (not a file)"
    )
    device: Literal["auto", "cpu", "cuda"] = pydantic.Field("auto", description="auto: cuda when available")
    view_every: Int = pydantic.Field(
        500, gt=0, le=MAX_STEPS, description="write a training view every N steps"
    )
    log_every: Int = pydantic.Field(
        10,
        gt=0,
        le=MAX_STEPS,
        description="read loss terms back from the device every N steps (progress line, metrics.jsonl: "
        "still one record per step); a NaN is caught at the next such step and no checkpoint keeps it",
    )
    checkpoint_every: Int = pydantic.Field(1000, gt=0, le=MAX_STEPS, description="write a checkpoint every N steps")
    prior: dict[str, Any] = pydantic.Field(description="[prior] table: name + options")
    field: dict[str, Any] = pydantic.Field(default_factory=lambda: {"name": "voxel"}, description="[field] table")
    losses: list[dict[str, Any]] = pydantic.Field(
        default_factory=list, max_length=MAX_LOSSES, description=f"[[losses]] tables (at most {MAX_LOSSES})"
    )
    camera: CameraConfig = pydantic.Field(default_factory=CameraConfig)
    paas: PaasConfig = pydantic.Field(default_factory=PaasConfig)

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, value: str) -> str:
        return _run_name(value)

    @field_validator("output")
    @classmethod
    def _output_is_a_folder(cls, value: str) -> str:
        return check_output_folder(value)


@dataclass(frozen=True)
class PluginChoice:
    """A plugin table after validation: which plugin, with its validated options."""

    info: PluginInfo
    options: BaseModel

    def as_table(self) -> dict[str, Any]:
        return {"name": self.info.name, **self.options.model_dump(mode="json")}


@dataclass(frozen=True)
class Recipe:
    """A fully validated recipe."""

    settings: RecipeModel
    prior: PluginChoice
    field: PluginChoice
    losses: list[PluginChoice]
    base_dir: Path
    source: str = "recipe"  # the file it came from, for error lines
    estimator: PluginChoice | None = None  # [estimator], or PAAS from [paas] (sjc_core.estimator_recipe)

    def resolved(self) -> dict[str, Any]:
        """Every value, defaults included, as plain data (what `sjc validate` prints)."""
        data = self.settings.model_dump(mode="json")
        data["prior"] = self.prior.as_table()
        data["field"] = self.field.as_table()
        data["losses"] = [loss.as_table() for loss in self.losses]
        resolve_tables(data, self.estimator)
        return data


PLUGIN_TABLES = {"prior": "priors", "field": "fields"}


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file, a syntax error or absurd nesting is a one-line SjcError."""
    try:
        if not path.exists():
            raise SjcError(f"{path}: no such file")
        if path.is_dir():
            raise SjcError(f"{path}: is a folder, expected a TOML recipe")
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise SjcError(f"{path}: TOML syntax error: {exc}") from None
    except RecursionError:
        raise SjcError(f"{path}: tables or arrays nested too deeply (at most {MAX_DEPTH} levels)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: a NUL in the path
        raise SjcError(f"{path}: cannot read: {exc}") from None
    check_depth(data, str(path))
    return data


def check_depth(data: Any, source: str, limit: int = MAX_DEPTH) -> None:
    """Refuse tables and arrays nested deeper than ``limit`` (no recursion: any depth is safe)."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        node, where = stack.pop()
        if len(where) > limit:
            parts = list(where)
            while len(parts) > 1 and parts[-1].isdigit():  # an array in an array...: name the key that holds it
                parts.pop()
            dotted = dotted_key(tuple(parts[:8])) + (".…" if len(parts) > 8 else "")
            raise SjcError(f"{source}: {dotted}: tables or arrays nested more than {limit} levels deep")
        if isinstance(node, dict):
            stack.extend((value, (*where, str(key))) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, (*where, str(index))) for index, value in enumerate(node))


def load_recipe(
    path: str | Path, registry: Registry, overrides: list[str] | None = None, base_dir: Path | None = None
) -> Recipe:
    """Read, override and validate a recipe file.

    Relative paths inside it resolve against ``base_dir``: by default the file's folder; a
    run folder's saved copy passes the original recipe's folder instead.
    """
    path = Path(path)
    raw = read_toml(path)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return validate_recipe(raw, registry, base_dir=base_dir or path.resolve().parent, source=str(path))


def parse_value(text: str) -> Any:
    """The value of ``--set KEY=TEXT``, typed by the recipe's models.

    TOML arrays, inline tables and quoted strings are parsed (``[30, 60]``); any other text
    is kept as typed and the model converts it, so ``12`` becomes an int for ``steps`` but
    stays the string "12" for ``name``, and ``abc`` for ``steps`` is a validation error.
    """
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise SjcError(f"--set value {shorten(text)}: arrays nested too deeply (at most {MAX_DEPTH} levels)") from None
    check_depth(value, f"--set value {shorten(text)}")
    return value if isinstance(value, (str, list, dict)) else text


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b=value`` to the raw recipe.

    Losses are addressed by position (``losses.0.weight``) or by plugin name
    (``losses.emptiness.weight``); naming a loss the recipe lacks adds it.
    """
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SjcError(f"--set {shorten(assignment)}: expected KEY=VALUE, e.g. --set prior.guidance_scale=50")
    parts = key.split(".")
    if len(parts) > MAX_DEPTH:
        raise SjcError(f"--set {shorten(key)}: more than {MAX_DEPTH} levels")
    shown = shown_key(key)
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, shown_key(".".join(parts[: depth + 1])))
        else:
            child = node.get(part)
            if child is None:
                child = [] if part == "losses" and depth == 0 else {}
                node[part] = child
            if not isinstance(child, (dict, list)):
                raise SjcError(f"--set {shown}: '{shown_key('.'.join(parts[: depth + 1]))}' is a value, not a table")
            node = child
    last = parts[-1]
    if isinstance(node, list):
        raise SjcError(f"--set {shown}: name a key inside the loss, e.g. {shown}.weight=1")
    value = parse_value(text.strip())
    if parts == [ESTIMATOR_TABLE, "name"]:  # switching estimator drops the other one's options
        switch_estimator(raw, value)
        node = raw[ESTIMATOR_TABLE]
    node[last] = value


def _list_item(items: list[Any], part: str, where: str) -> dict[str, Any]:
    if part.isdigit():
        index = int(part)
        if index >= len(items):
            raise SjcError(f"--set {where}: the recipe has {len(items)} entries there")
        if not isinstance(items[index], dict):
            raise SjcError(f"--set {where}: is a value, not a table")
        return items[index]
    for item in items:
        if isinstance(item, dict) and item.get("name") == part:
            return item
    items.append({"name": part})
    return items[-1]


def validate_recipe(raw: dict[str, Any], registry: Registry, base_dir: Path, source: str = "recipe") -> Recipe:
    """Validate the top level and every plugin table, collecting all problems."""
    check_depth(raw, source)
    problems: list[str] = []
    settings: RecipeModel | None = None
    try:
        settings = RecipeModel.model_validate(without_table(raw))
    except ValidationError as exc:
        problems.extend(format_errors(exc, RecipeModel))
    else:  # the plugin tables are checked by their own models below
        own = {key: value for key, value in without_table(raw).items() if key not in ("prior", "field", "losses")}
        problems.extend(coercion_problems(own, settings, ""))
    estimator, settings = choose_estimator(raw, settings, registry, problems)

    choices: dict[str, PluginChoice | None] = {}
    for table, kind in PLUGIN_TABLES.items():
        value = raw.get(table, {"name": "voxel"} if table == "field" else None)
        if isinstance(value, dict):
            choices[table] = _validate_plugin(value, kind, table, registry, problems)
    losses: list[PluginChoice] = []
    raw_losses = raw.get("losses", [])
    if isinstance(raw_losses, list) and len(raw_losses) <= MAX_LOSSES:
        for index, table in enumerate(raw_losses):
            if isinstance(table, dict):
                choice = _validate_plugin(table, "losses", f"losses.{index}", registry, problems)
                if choice is not None:
                    losses.append(choice)

    if problems:
        keys = known_keys(raw, registry, choices)
        problems = [with_suggestion(problem, keys) for problem in problems]
    if problems or settings is None:
        raise SjcError(*(f"{source}: {p}" for p in problems))
    prior, field = choices.get("prior"), choices.get("field")
    assert prior is not None and field is not None
    return Recipe(settings=settings, prior=prior, field=field, losses=losses, base_dir=base_dir, source=source,
                  estimator=estimator)


def _validate_plugin(
    table: dict[str, Any], kind: str, where: str, registry: Registry, problems: list[str]
) -> PluginChoice | None:
    name = table.get("name")
    if not isinstance(name, str) or not name:
        known = ", ".join(registry.names(kind)) or "none installed"
        got = f" (got {shorten(name)})" if name is not None else ""
        problems.append(f"{where}.name: required: the {SINGULAR[kind]} plugin to use (known: {known}){got}")
        return None
    try:
        info = registry.get(kind, name, where=f"{where}.name")
    except SjcError as exc:
        problems.extend(exc.problems)
        return None
    options = {k: v for k, v in table.items() if k != "name"}
    try:
        validated = info.options.model_validate(options)
    except ValidationError as exc:
        problems.extend(format_errors(exc, info.options, prefix=f"{where}."))
        return None
    except (TypeError, ValueError, RecursionError) as exc:  # a plugin validator that raised something else
        problems.append(f"{where}: invalid options: {error_line(exc)}")
        return None
    found = coercion_problems(options, validated, f"{where}.")
    if found:
        problems.extend(found)
        return None
    return PluginChoice(info=info, options=validated)


# ----------------------------------------------------------------------------- key hints


def known_keys(raw: dict[str, Any], registry: Registry, choices: dict[str, PluginChoice | None] | None = None) -> list[str]:
    """Every dotted key this recipe could set: top level, camera.*, paas.*, and its plugins' options."""
    keys = [name for name in RecipeModel.model_fields if name not in ("camera", "paas")]
    keys += [f"camera.{name}" for name in CameraConfig.model_fields]
    keys += [f"paas.{name}" for name in PaasConfig.model_fields] + estimator_keys(raw, registry)
    tables: list[tuple[str, str, Any]] = [(table, kind, raw.get(table)) for table, kind in PLUGIN_TABLES.items()]
    if not isinstance(raw.get("field"), dict):
        tables[1] = ("field", "fields", {"name": "voxel"})
    raw_losses = raw.get("losses")
    if isinstance(raw_losses, list):
        tables += [(f"losses.{i}", "losses", t) for i, t in enumerate(raw_losses[:MAX_LOSSES])]
    for where, kind, table in tables:
        name = table.get("name") if isinstance(table, dict) else None
        info = registry.entries.get((kind, name)) if isinstance(name, str) else None
        if info is not None:
            keys += [f"{where}.{option}" for option in info.options.model_fields]
    return keys


from sjc_core.preflight import check_ready, preflight_problems, ready_problems  # noqa: E402,F401 (re-exported)
