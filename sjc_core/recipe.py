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

:func:`check_ready` runs the checks ``sjc run`` would make when it builds the plugins
(folders that must exist, extras that must be installed, weights that must be present),
through each options model's optional ``preflight(ctx)`` method; ``sjc validate`` calls it.
"""

from __future__ import annotations

import difflib
import math
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from sjc_core.errors import SjcError, did_you_mean
from sjc_core.plugins import SINGULAR, PluginInfo, Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# ----------------------------------------------------------------------------- limits
# Generous, but each one a machine can honour; every message that enforces one states it.
MAX_STEPS = 10**7  # the sigma schedule is precomputed: 80 MB of float64 at the limit
MAX_SEED = 2**63 - 1  # torch.manual_seed takes 64 bits; numpy any; 63 keeps it a signed int64 everywhere
MAX_LR = 1e3
MAX_RADIUS = 1e3
MAX_RENDER_SIZE = 4096
MAX_TEST_FRAMES = 10_000  # every turntable frame is held in memory until the video is written
MAX_SPIRAL_ROUNDS = 1000
MAX_FPS = 1000
MAX_AZIMUTH = 720.0
MAX_SIGMA = 1e6
MAX_N_NOISE = 256
MAX_LOSSES = 64
MAX_NAME_LENGTH = 100  # characters; the run folder NAME-seedSEED must fit a 255-byte file name
MAX_NAME_BYTES = 200
MAX_PATH_LENGTH = 4096
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 32  # nesting of tables and arrays in a recipe
ECHO_LIMIT = 60  # characters of a user's value repeated in an error line


def shorten(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters with an ellipsis: values echoed in errors.

    repr also escapes newlines and NULs, so an echoed value never breaks the one-line rule.
    """
    if isinstance(value, (str, bytes, list, tuple, dict)) and len(value) > 4 * limit:
        value = value[: 4 * limit] if not isinstance(value, dict) else dict(list(value.items())[:limit])
    try:
        text = repr(value)
    except ValueError:  # an integer too long for str()
        text = f"<a whole number of {value.bit_length()} bits>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ----------------------------------------------------------------------------- value types


def _whole_number(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer, not true or false")
    return value


def _real_number(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "Input should be a valid number, not true or false")
    return value


def _flag(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # as typed after --set
        return value.strip().lower() == "true"
    raise PydanticCustomError("bool_type", "Input should be a valid boolean: true or false")


def _control_character(value: str, allowed: str = "") -> str | None:
    for char in value:
        code = ord(char)
        if (code < 32 or 127 <= code < 160) and char not in allowed:
            return char
    return None


def _text(value: str) -> str:
    bad = _control_character(value, allowed="\t\n\r")
    if bad is not None:
        raise PydanticCustomError("string_control", "must not contain the control character {char}", {"char": repr(bad)})
    return value


def _line(value: str) -> str:
    bad = _control_character(value)
    if bad is not None:
        raise PydanticCustomError("string_control", "must not contain the control character {char}", {"char": repr(bad)})
    return value


def _path_text(value: str) -> str:
    _line(value)
    if not value.strip():
        raise PydanticCustomError("string_blank", "must not be blank")
    for part in Path(value).parts:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
            raise PydanticCustomError(
                "path_component", "each folder or file name must be at most {limit} bytes", {"limit": MAX_COMPONENT_BYTES}
            )
    return value


# Whole numbers: an int, a float without a fraction or digits typed after --set; never a bool.
Int = Annotated[int, BeforeValidator(_whole_number)]
# Real numbers: finite (no nan, inf, -inf) and never a bool.
Float = Annotated[float, BeforeValidator(_real_number), AllowInfNan(False)]
FiniteFloat = Float
# Switches: true or false (or the words, as typed after --set); never a number.
Flag = Annotated[bool, BeforeValidator(_flag)]
# Free text (prompts): no control characters but tab and newline. Give max_length in Field.
Text = Annotated[str, AfterValidator(_text)]
# One line of text (ids, revisions): no control characters at all.
Line = Annotated[str, AfterValidator(_line)]
# A path: one line, each component a legal file name length. Give max_length in Field.
PathText = Annotated[str, AfterValidator(_path_text)]


def bounded(kind: Any, *, max_length: int, min_length: int = 0) -> Any:
    """``kind`` (:data:`Text`, :data:`Line` or :data:`PathText`) with its length limits checked
    first; use it where ``Field(max_length=...)`` cannot reach, e.g. inside ``X | None``."""
    checks = typing.get_args(kind)[1:]
    return Annotated[(str, StringConstraints(min_length=min_length, max_length=max_length), *checks)]


# What every options model should say in its model_config (the core models do).
STRICT_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


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

    def resolved(self) -> dict[str, Any]:
        """Every value, defaults included, as plain data (what `sjc validate` prints)."""
        data = self.settings.model_dump(mode="json")
        data["prior"] = self.prior.as_table()
        data["field"] = self.field.as_table()
        data["losses"] = [loss.as_table() for loss in self.losses]
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
            dotted = _dotted(tuple(parts[:8])) + (".…" if len(parts) > 8 else "")
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
    shown = _shown_key(key)
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, _shown_key(".".join(parts[: depth + 1])))
        else:
            child = node.get(part)
            if child is None:
                child = [] if part == "losses" and depth == 0 else {}
                node[part] = child
            if not isinstance(child, (dict, list)):
                raise SjcError(f"--set {shown}: '{_shown_key('.'.join(parts[: depth + 1]))}' is a value, not a table")
            node = child
    last = parts[-1]
    if isinstance(node, list):
        raise SjcError(f"--set {shown}: name a key inside the loss, e.g. {shown}.weight=1")
    node[last] = parse_value(text.strip())


def _shown_key(key: str) -> str:
    """A dotted key as it may appear in an error line: printable and not too long."""
    if len(key) <= ECHO_LIMIT and _control_character(key) is None:
        return key
    return shorten(key)


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
        settings = RecipeModel.model_validate(raw)
    except ValidationError as exc:
        problems.extend(format_errors(exc, RecipeModel))
    else:  # the plugin tables are checked by their own models below
        own = {key: value for key, value in raw.items() if key not in ("prior", "field", "losses")}
        problems.extend(coercion_problems(own, settings, ""))

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
        problems = [_with_suggestion(problem, keys) for problem in problems]
    if problems or settings is None:
        raise SjcError(*(f"{source}: {p}" for p in problems))
    prior, field = choices.get("prior"), choices.get("field")
    assert prior is not None and field is not None
    return Recipe(settings=settings, prior=prior, field=field, losses=losses, base_dir=base_dir, source=source)


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
        problems.append(f"{where}: invalid options: {_first_line(exc)}")
        return None
    found = coercion_problems(options, validated, f"{where}.")
    if found:
        problems.extend(found)
        return None
    return PluginChoice(info=info, options=validated)


def coercion_problems(raw: Any, model: BaseModel, prefix: str) -> list[str]:
    """What a lax options model let through that no run can use, one line each.

    The built-in models never get here (their value types refuse these); a plugin whose
    model uses plain ``float``/``int``/``bool`` would otherwise turn ``true`` into 1, 1
    into ``true``, or keep NaN and Inf.
    """
    found: list[str] = []

    def walk(given: Any, kept: Any, where: str) -> None:
        if isinstance(given, dict) and isinstance(kept, dict):
            for key, value in given.items():
                if key in kept:
                    walk(value, kept[key], f"{where}.{key}" if where else str(key))
        elif isinstance(given, (list, tuple)) and isinstance(kept, (list, tuple)) and len(given) == len(kept):
            for index, (value, out) in enumerate(zip(given, kept)):
                walk(value, out, f"{where}.{index}")
        elif isinstance(given, bool) and isinstance(kept, (int, float)) and not isinstance(kept, bool):
            found.append(f"{prefix}{where}: Input should be a valid number, not true or false (got {shorten(given)})")
        elif isinstance(given, (int, float)) and not isinstance(given, bool) and isinstance(kept, bool):
            found.append(f"{prefix}{where}: Input should be a valid boolean: true or false (got {shorten(given)})")
        elif isinstance(kept, float) and not math.isfinite(kept):
            found.append(f"{prefix}{where}: Input should be a finite number (got {shorten(given)})")

    walk(raw, model.model_dump(mode="python"), "")
    return found


def format_errors(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per pydantic error: dotted path, message, and a hint for unknown keys.

    A model validator's message that starts with one of the model's fields (``"sigma_min:
    ..."``) is reported at that field. Echoed values are cut to :data:`ECHO_LIMIT` characters.
    """
    lines = []
    seen: set[str] = set()
    for error in exc.errors(include_url=False):
        loc = [_shown_key(str(part)) for part in error["loc"]]
        kind = error["type"]
        if kind == "extra_forbidden":
            known = _fields_at(model, error["loc"][:-1])
            path = _join(prefix, loc)
            line = f"{path}: unknown key{did_you_mean(loc[-1], known)}"
        elif kind == "missing":
            line = f"{_join(prefix, loc)}: required key missing"
        else:
            message = error["msg"].removeprefix("Value error, ")
            head, sep, rest = message.partition(": ")
            if sep and head in _fields_at(model, error["loc"]):
                loc, message = [*loc, head], rest
            value = error.get("input")
            got = f" (got {shorten(value)})" if isinstance(value, (str, int, float, bool)) and value is not None else ""
            line = f"{_join(prefix, loc)}: {_one_line(message)}{got}"
        if line not in seen:  # a union reports each member; once is enough
            seen.add(line)
            lines.append(line)
    return lines


def _join(prefix: str, loc: list[str]) -> str:
    if loc:
        return prefix + ".".join(loc)
    return prefix.rstrip(".") or "recipe"


def _one_line(message: str) -> str:
    message = " ".join(message.split("\n"))
    return message if len(message) <= 300 else message[:299] + "…"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return _one_line(text.splitlines()[0])


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at ``loc``, for 'did you mean' hints."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(str(part))
        if info is None:
            return []
        current = info.annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _dotted(parts: tuple[str, ...]) -> str:
    return ".".join(_shown_key(part) for part in parts)


# ----------------------------------------------------------------------------- key hints


def known_keys(raw: dict[str, Any], registry: Registry, choices: dict[str, PluginChoice | None] | None = None) -> list[str]:
    """Every dotted key this recipe could set: top level, camera.*, paas.*, and its plugins' options."""
    keys = [name for name in RecipeModel.model_fields if name not in ("camera", "paas")]
    keys += [f"camera.{name}" for name in CameraConfig.model_fields]
    keys += [f"paas.{name}" for name in PaasConfig.model_fields]
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


def suggest_key(dotted: str, keys: list[str]) -> str | None:
    """The valid dotted key nearest to ``dotted``: the same last part elsewhere first, then spelling."""
    leaf = dotted.rsplit(".", 1)[-1]
    same_leaf = [key for key in keys if key.rsplit(".", 1)[-1] == leaf and key != dotted]
    if same_leaf:
        return min(same_leaf, key=lambda key: (key.count("."), key))
    close = difflib.get_close_matches(dotted, keys, n=1, cutoff=0.75)
    return close[0] if close and close[0] != dotted else None


def _with_suggestion(problem: str, keys: list[str]) -> str:
    """An 'unknown key' line without a hint gets the nearest valid dotted key anywhere."""
    path, sep, message = problem.partition(": ")
    if sep and message == "unknown key":
        suggestion = suggest_key(path, keys)
        if suggestion:
            return f"{path}: unknown key (did you mean '{suggestion}'?)"
    return problem


# ----------------------------------------------------------------------------- before a run


def check_ready(recipe: Recipe) -> list[str]:
    """Run the checks ``sjc run`` makes when it builds the plugins, without building them.

    Every problem of :func:`ready_problems` becomes one line ``SOURCE: path: message`` of an
    :class:`SjcError`; the notes (what this machine lacks but the recipe does not, such as
    weights not downloaded yet) come back in the same form. Nothing is built or written.
    """
    notes: list[str] = []
    problems = ready_problems(recipe, notes)
    if problems:
        raise SjcError(*(f"{recipe.source}: {problem}" for problem in problems))
    return [f"{recipe.source}: {note}" for note in notes]


def ready_problems(recipe: Recipe, notes: list[str] | None = None) -> list[str]:
    """What would stop this recipe's run when it builds its plugins, one ``path: message`` each.

    The device must exist, and each plugin's options model may define ``preflight(ctx)``:
    cheap checks, the same ones its factory makes first, that raise :class:`SjcError` for
    problems (a folder that does not exist or holds no images, an extra not installed) and
    may return notes (lines about this machine rather than the recipe, e.g. weights that
    are not in the local cache yet), which are added to ``notes``.
    """
    places = [("prior", recipe.prior), ("field", recipe.field)]
    places += [(f"losses.{index}", choice) for index, choice in enumerate(recipe.losses)]
    places = [(where, choice) for where, choice in places if callable(getattr(choice.options, "preflight", None))]
    if not places and recipe.settings.device != "cuda":
        return []  # nothing to ask
    from sjc_core.contracts import BuildContext

    problems: list[str] = []
    device = recipe.settings.device  # the setting: preflights resolve it only if they need to
    if device == "cuda":  # a card that is not there stops the run: say so now
        from sjc_core.devices import resolve_device

        try:
            resolve_device(device)
        except SjcError as exc:
            problems.extend(exc.problems)
            device = "cpu"
    ctx = BuildContext(device=device, base_dir=recipe.base_dir, seed=recipe.settings.seed)
    for where, choice in places:
        problems.extend(preflight_problems(choice.options, ctx, where, notes))
    return problems


def preflight_problems(options: BaseModel, ctx: Any, where: str, notes: list[str] | None = None) -> list[str]:
    """The problems an options model's ``preflight(ctx)`` reports (none when it has none);
    the notes it returns go to ``notes``."""
    check = getattr(options, "preflight", None)
    if not callable(check):
        return []
    try:
        said = check(ctx)
    except SjcError as exc:
        return [_one_line(problem) for problem in exc.problems]
    except Exception as exc:  # a plugin's check that crashed: still one line, naming the table
        return [f"{where}: check failed: {type(exc).__name__}: {_first_line(exc)}"]
    if notes is not None and isinstance(said, (list, tuple)):
        notes.extend(_one_line(str(note)) for note in said)
    return []
